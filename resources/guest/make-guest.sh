#!/bin/bash
# `make guest`: builds Kestrel's test guest once and caches it outside the repo.
#
# usage: make-guest.sh [OUTDIR]        (default: target/guest)
#   -> OUTDIR/vmlinux                 the kernel (acpi variant, PVH ELF)
#      OUTDIR/initramfs.cpio          the 10 KB init of guest-tiny-init.c
#      OUTDIR/initramfs-busybox.cpio  busybox userland (interactive use, tests needing a shell)
#      OUTDIR/cmdline                 the kernel command line tests use (one line, no guest.* words)
#
# The cache key is a hash of every input: this script (it holds the command
# line), the kernel and initramfs scripts, guest-kernel.config, guest-kernel.patch,
# guest-tiny-init.c, and the versions of linux-source, busybox-static and gcc.
#   $KESTREL_CACHE/guest/<hash>/          the four files above (+ inputs.txt)
#   $KESTREL_CACHE/guest/kernel-<khash>/  vmlinux, config, build.log: keyed by the
#                                         kernel's inputs only, so an init change
#                                         rebuilds the initramfs (seconds), not the
#                                         kernel (minutes)
# KESTREL_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/kestrel. OUTDIR keeps
# the hash in OUTDIR/.hash: when it matches, nothing is done (well under a second).
# The kernel is built in WORK (default /tmp/kernel-build), which is kept as an
# incremental-build speed-up, never needed. Old cache entries are not removed:
# `rm -rf ~/.cache/kestrel/guest` is always safe.
set -euo pipefail

HERE=$(dirname "$(readlink -f "$0")")
OUT=${1:-target/guest}
CACHE=${KESTREL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kestrel}/guest
KSRC_VER=6.12
# The kernel command line for the tests (see README.md for each word's reason).
# Tests append guest.* words, and reboot=k with guest.reboot where there is no ACPI.
CMDLINE="console=ttyS0 quiet panic=-1 pvm_syscall_fixup"
CMDLINE+=" clearcpuid=xsave,popcnt,rdtscp,rdpid,fsgsbase,smap,pcid,invpcid,erms,fsrm,lfence_rdtsc,cx16"
CMDLINE+=" noreplace-smp rodata=off percpu_alloc=page tsc=reliable no_timer_check"

say() { echo "guest: $*"; }
t0=$(date +%s%N)
elapsed() { local ms=$((($(date +%s%N) - t0) / 1000000)); printf '%dm%02d.%ds' $((ms / 60000)) $((ms / 1000 % 60)) $((ms / 100 % 10)); }

# The package versions are inputs: install the two packages first if missing
# (the kernel script installs the rest of its build dependencies itself).
pkgver() { dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$1" 2>/dev/null | sed -n 's/^ii *//p'; }
need=()
[ -n "$(pkgver "linux-source-$KSRC_VER")" ] || need+=("linux-source-$KSRC_VER")
[ -n "$(pkgver busybox-static)" ] || need+=(busybox-static)
command -v gcc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]} (apt-get; linux-source is about 150 MB)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

file_hash() { sha256sum "$HERE/$1" | cut -c1-64; }
kernel_inputs() {
    echo "variant acpi, config pinned"
    echo "linux-source-$KSRC_VER $(pkgver "linux-source-$KSRC_VER")"
    echo "gcc $(gcc --version | head -1)"
    for f in build-guest-kernel.sh guest-kernel.config guest-kernel.patch; do
        echo "$f $(file_hash "$f")"
    done
}
KINPUTS=$(kernel_inputs)
KHASH=$(echo "$KINPUTS" | sha256sum | cut -c1-16)
INPUTS=$(
    echo "$KINPUTS"
    echo "busybox-static $(pkgver busybox-static)"
    for f in make-guest.sh build-guest-initrd.sh guest-tiny-init.c; do
        echo "$f $(file_hash "$f")"
    done
)
HASH=$(echo "$INPUTS" | sha256sum | cut -c1-16)
FILES=(vmlinux initramfs.cpio initramfs-busybox.cpio cmdline)

complete() { for f in "${FILES[@]}"; do [ -s "$1/$f" ] || return 1; done; }
if [ "$(cat "$OUT/.hash" 2>/dev/null)" = "$HASH" ] && complete "$OUT"; then
    say "$OUT is up to date (inputs $HASH)"
    exit 0
fi

mkdir -p "$CACHE"
ENTRY=$CACHE/$HASH
if ! complete "$ENTRY"; then
    # One build at a time per cache: they share WORK.
    exec 9> "$CACHE/.lock"
    if ! flock -n 9; then
        say "waiting for another make guest to finish ($CACHE/.lock)"
        flock 9
    fi
    # Left by a build that was killed.
    find "$CACHE" -mindepth 1 -maxdepth 1 -name '.build-*' -exec rm -rf {} +
fi
if ! complete "$ENTRY"; then
    say "inputs $HASH not in the cache: building into $ENTRY"
    TMP=$(mktemp -d "$CACHE/.build-$HASH.XXXXXX")
    trap 'rm -rf "$TMP"' EXIT
    KDIR=$CACHE/kernel-$KHASH
    if [ -s "$KDIR/vmlinux" ]; then
        say "[1/3] kernel: cached in $KDIR"
    else
        say "[1/3] kernel: building (3-5 minutes on 2 cores, +20 s to unpack" \
            "the source the first time)"
        # Kept if the build fails, for its build.log (the next make guest removes it).
        KTMP=$(mktemp -d "$CACHE/.build-kernel-$KHASH.XXXXXX")
        GUEST_KCONFIG=$HERE/guest-kernel.config KSRC_VER=$KSRC_VER "$HERE/build-guest-kernel.sh" "$KTMP" acpi
        echo "$KINPUTS" > "$KTMP/inputs.txt"
        chmod 755 "$KTMP"
        rm -rf "$KDIR"
        mv "$KTMP" "$KDIR"
        say "kernel cached in $KDIR (config, build.log beside it)"
    fi
    ln "$KDIR/vmlinux" "$TMP/vmlinux" 2>/dev/null || cp "$KDIR/vmlinux" "$TMP/vmlinux"
    say "[2/3] initramfs.cpio: the tiny init"
    "$HERE/build-guest-initrd.sh" "$TMP/initramfs.cpio" --tiny | sed 's/^/guest:   /'
    say "[3/3] initramfs-busybox.cpio"
    "$HERE/build-guest-initrd.sh" "$TMP/initramfs-busybox.cpio" | sed 's/^/guest:   /'
    echo "$CMDLINE" > "$TMP/cmdline"
    echo "$INPUTS" > "$TMP/inputs.txt"
    chmod 755 "$TMP"
    rm -rf "$ENTRY"
    mv "$TMP" "$ENTRY"
    trap - EXIT
else
    say "inputs $HASH found in the cache ($ENTRY)"
fi

mkdir -p "$OUT"
rm -f "$OUT/.hash"
for f in "${FILES[@]}"; do
    cp "$ENTRY/$f" "$OUT/$f.tmp"
    mv "$OUT/$f.tmp" "$OUT/$f"
done
echo "$HASH" > "$OUT/.hash"
say "$OUT ready in $(elapsed):"
(cd "$OUT" && ls -l "${FILES[@]}" | sed 's/^/guest:   /')
