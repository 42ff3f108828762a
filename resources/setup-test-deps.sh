#!/bin/bash
# Installs what Kestrel's test suite needs beyond a fresh Debian 12 machine with
# rustup's cargo, gcc and python3: Debian packages (only the missing ones;
# `apt-get update` only if one is missing), the rustfmt and clippy components,
# and a Python venv with the qemu.qmp client library; then checks that every
# command the suite runs is there and fails with one line naming what is not.
# Idempotent; a second run with everything present takes a fraction of a second.
# Run as root (apt-get). `make guest` installs the guest build's own packages.
#
# QEMU is the reference the tests compare Kestrel with, and its tools come as one
# set: qemu-system-x86 and qemu-utils of Debian 12's QEMU 7.2, installed in one
# apt transaction at the same version. A machine may already carry another
# qemu-utils (a backport of QEMU 10 has been seen): it is replaced by 7.2's, never
# left for the QEMU 7.2 install to remove as a conflict.
#
# The venv is $KESTREL_CACHE/venv (default ${XDG_CACHE_HOME:-$HOME/.cache}/kestrel/venv);
# `make test` gives its python to the tests as KESTREL_PYTHON.
set -euo pipefail

# What each package is for:
#   qemu-system-x86  QEMU 7.2, the reference the tests compare Kestrel against
#   qemu-utils       qemu-img (same QEMU 7.2 set): raw and qcow2 images for the block tests
#   acpica-tools     iasl: disassembles and checks the ACPI tables Kestrel builds
#   busybox-static   the guest's userland and the initramfs packer
#   cpio             reading initramfs archives
#   iproute2         ip: tap devices and network namespaces for the net tests
#   e2fsprogs        mkfs.ext4 for disk images
#   socat            talking to a QMP socket by hand (make run)
#   iputils-ping     the host side of the virtio-net test pings the guest
#   strace           the boot benchmark traces exec and KVM_RUN of both VMMs the same way
#   fio              the virtio-blk benchmark measures the host's own limit with it
#   python3-pip, python3-venv  the Python QMP client (below)
QEMU_PKGS=(qemu-system-x86 qemu-utils)
QEMU_SERIES=1:7.2
PKGS=(acpica-tools busybox-static cpio iproute2 iputils-ping e2fsprogs socat strace fio
      python3-pip python3-venv)
PY_PKGS=(qemu.qmp==0.0.6)
# Every command the suite runs, and the package that brings it.
TOOLS=(qemu-system-x86_64:qemu-system-x86 qemu-img:qemu-utils iasl:acpica-tools
       busybox:busybox-static cpio:cpio ip:iproute2 ping:iputils-ping mkfs.ext4:e2fsprogs
       socat:socat strace:strace fio:fio)

say() { echo "deps: $*"; }
die() { echo "deps: FAILED: $*" >&2; exit 1; }

# "PACKAGE VERSION" for each installed package of the list.
installed_versions() {
    (dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\n' "$@" 2>/dev/null || true) \
        | awk '$1 == "ii" { print $2, $3 }'
}

updated=
apt_update() {
    [ -n "$updated" ] && return
    apt-get update -q >/dev/null
    updated=1
}
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        --allow-downgrades "$@" >/dev/null
}

# The QEMU set: both packages installed, at one version, of the 7.2 series.
qemu_ok() {
    local v
    v=$(installed_versions "${QEMU_PKGS[@]}")
    [ "$(wc -l <<< "$v")" = "${#QEMU_PKGS[@]}" ] || return 1
    [ "$(awk '{ print $2 }' <<< "$v" | sort -u | wc -l)" = 1 ] || return 1
    [[ "$(awk 'NR == 1 { print $2 }' <<< "$v")" == "$QEMU_SERIES"* ]]
}
if ! qemu_ok; then
    apt_update
    # The newest 7.2 build the archive has for qemu-system-x86; every package of the
    # set is pinned to it so that apt cannot keep (or pick) another series for one.
    qv=$(apt-cache madison qemu-system-x86 | awk -v s="$QEMU_SERIES" 'index($3, s) == 1 { print $3; exit }')
    [ -n "$qv" ] || die "no qemu-system-x86 of the $QEMU_SERIES series in the apt sources (Debian 12 bookworm is needed)"
    have=$(installed_versions "${QEMU_PKGS[@]}" | tr '\n' ' ')
    say "installing the QEMU set ${QEMU_PKGS[*]} at $qv${have:+ (had: $have)}"
    # qemu-system-common and -data are pinned too: a newer one from elsewhere would
    # otherwise satisfy qemu-system-x86's >= dependency on the data package.
    apt_install "${QEMU_PKGS[@]/%/=$qv}" "qemu-system-common=$qv" \
        "qemu-system-data=$(apt-cache madison qemu-system-data | awk -v s="$QEMU_SERIES" 'index($3, s) == 1 { print $3; exit }')"
    qemu_ok || die "the QEMU set is not at one $QEMU_SERIES version after installing: $(installed_versions "${QEMU_PKGS[@]}" | tr '\n' ' ')"
fi

installed=$(installed_versions "${PKGS[@]}" | awk '{ print $1 }')
missing=()
for p in "${PKGS[@]}"; do
    grep -qx "$p" <<< "$installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt_update
    apt_install "${missing[@]}"
fi

for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        say "adding the $c component (rustup)"
        rustup component add "$c"
    fi
done

VENV=${KESTREL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}/venv
if [ "$(cat "$VENV/.kestrel-pkgs" 2>/dev/null)" != "${PY_PKGS[*]}" ] \
        || ! "$VENV/bin/python3" -c 'import qemu.qmp' >/dev/null 2>&1; then
    say "creating $VENV with ${PY_PKGS[*]}"
    python3 -m venv --clear "$VENV"
    "$VENV/bin/python3" -m pip install -q --disable-pip-version-check "${PY_PKGS[@]}"
    echo "${PY_PKGS[*]}" > "$VENV/.kestrel-pkgs"
fi

# Every tool, checked where the tests will look for it; one line names all that is missing.
absent=()
for t in "${TOOLS[@]}"; do
    command -v "${t%%:*}" >/dev/null || absent+=("${t%%:*} (Debian package ${t#*:})")
done
"$VENV/bin/python3" -c 'import qemu.qmp' >/dev/null 2>&1 \
    || absent+=("$VENV/bin/python3 with qemu.qmp (pip ${PY_PKGS[*]})")
[ -x "$VENV/bin/qmp-shell" ] || absent+=("$VENV/bin/qmp-shell (pip ${PY_PKGS[*]})")
[ ${#absent[@]} = 0 ] || die "missing after install: ${absent[*]}"
for t in qemu-img qemu-system-x86_64; do
    v=$("$t" --version | head -1)
    [[ "$v" == *"version 7.2"* ]] || die "$t is not QEMU 7.2, the suite's reference: $v"
done

[ -w /dev/kvm ] || say "warning: /dev/kvm is missing or not writable: the tests that boot a guest will fail"
say "all present: $(qemu-system-x86_64 --version | head -1), $(qemu-img --version | head -1)"
