#!/bin/bash
# Installs what Kestrel's test suite needs beyond a fresh Debian 12 machine with
# rustup's cargo, gcc and python3: Debian packages (only the missing ones;
# `apt-get update` only if one is missing), the rustfmt and clippy components,
# and a Python venv with the qemu.qmp client library. Idempotent; a second run
# with everything present takes a fraction of a second. Run as root (apt-get).
# `make guest` installs the guest build's own packages (linux-source, compilers).
#
# The venv is $KESTREL_CACHE/venv (default ${XDG_CACHE_HOME:-$HOME/.cache}/kestrel/venv);
# `make test` gives its python to the tests as KESTREL_PYTHON.
set -euo pipefail

# What each package is for:
#   qemu-system-x86  QEMU 7.2, the reference the tests compare Kestrel against
#   qemu-utils       qemu-img: raw and qcow2 images for the block tests
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
PKGS=(qemu-system-x86 qemu-utils acpica-tools busybox-static cpio iproute2 iputils-ping e2fsprogs socat strace fio
      python3-pip python3-venv)
PY_PKGS=(qemu.qmp==0.0.6)

say() { echo "deps: $*"; }

installed=$( (dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${PKGS[@]}" 2>/dev/null || true) \
    | awk '$1 == "ii" { print $2 }')
missing=()
for p in "${PKGS[@]}"; do
    grep -qx "$p" <<< "$installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
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

[ -w /dev/kvm ] || say "warning: /dev/kvm is missing or not writable: the tests that boot a guest will fail"
say "all present"
