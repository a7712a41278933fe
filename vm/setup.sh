#!/usr/bin/env bash
# Builds (or verifies) everything `vm/run.sh` boots, under $VM_CACHE (default .cache/vm):
#   kernel/<abi>/     Debian's linux-image-6.12.*+deb12-amd64-unsigned + headers/common/kbuild,
#                     `dpkg -x`ed (nothing is installed on the host); the headers tree is the KDIR
#                     for out-of-tree modules (see vm/kdir)
#   oot/<abi>/        v4l2-mem2mem, visl, vicodec, vim2m built out of tree from linux-source-6.12
#                     (Debian builds none of them) against that exact kernel
#   rootfs/           trixie userspace (v4l-utils, GStreamer, FFmpeg, kmod...) made by mmdebstrap,
#                     with the kernel's modules + the OOT ones under /usr/lib/modules/<abi>
#   initrd-<abi>-<hash>.cpio.gz   busybox /init (vm/guest/init) + the 9p modules
# Every step is skipped when its stamp matches, so a warm run costs a few apt-cache queries.
# Prints the ABI in use on stdout. Env: VM_CACHE, VM_REFRESH=1 (re-resolve even offline).
set -euo pipefail
# shellcheck source=vm/lib.sh
. "$(dirname "$0")/lib.sh"

mkdir -p "$VM_CACHE"
exec 9>"$VM_CACHE/.setup.lock"
flock 9

bash "$VM_DIR/install-host-deps.sh"

# ---------------------------------------------------------------- kernel version
if ! resolved=$(vm_resolve_kernel); then
    if [ -n "$(vm_current_abi)" ]; then
        resolved="$(vm_current_abi) cached"
        vm_log "apt offers no linux-image-$VM_KERNEL_SERIES.*+$VM_KERNEL_DIST; keeping cached $(vm_current_abi)"
    else
        apt-get update -qq
        resolved=$(vm_resolve_kernel) || vm_die "apt offers no linux-image-$VM_KERNEL_SERIES.*+$VM_KERNEL_DIST-amd64-unsigned with a matching linux-source-$VM_KERNEL_SERIES"
    fi
fi
read -r ABI PKGVER <<<"$resolved"
KREL=${ABI%-amd64}            # e.g. 6.12.117+deb12
KROOT=$VM_CACHE/kernel/$ABI
DEBS=$VM_CACHE/debs/$ABI

download_debs() { # names... (at version $PKGVER) into $DEBS
    local want=() n
    for n in "$@"; do
        ls "$DEBS/${n}_"*.deb >/dev/null 2>&1 || want+=("$n=$PKGVER")
    done
    [ ${#want[@]} -gt 0 ] || return 0
    mkdir -p "$DEBS"
    vm_log "downloading ${want[*]}"
    (cd "$DEBS" && apt-get download -q "${want[@]}" >/dev/null 2>&1) && return 0
    # Stale apt lists: the security archive only keeps the newest build, so what the lists name
    # may be gone. Refresh them and start over once (the version is resolved again).
    [ -z "${VM_SETUP_RETRIED:-}" ] || vm_die "apt-get download ${want[*]} failed"
    vm_log "download failed; refreshing apt lists and resolving the kernel again"
    apt-get update -qq
    flock -u 9
    VM_SETUP_RETRIED=1 exec bash "$0"
}

# ---------------------------------------------------------------- kernel tree
if [ "$PKGVER" != cached ] && [ ! -f "$KROOT/.vm-done" ]; then
    download_debs "linux-image-$ABI-unsigned" "linux-headers-$ABI" "linux-headers-$KREL-common" "linux-kbuild-$KREL"
    vm_log "extracting kernel $ABI ($PKGVER)"
    rm -rf "$KROOT.tmp"
    mkdir -p "$KROOT.tmp"
    for d in "$DEBS"/linux-image-*.deb "$DEBS"/linux-headers-*.deb "$DEBS"/linux-kbuild-*.deb; do
        dpkg -x "$d" "$KROOT.tmp"
    done
    # modules may ship under /usr/lib/modules (merged /usr); tools below look in lib/modules
    if [ ! -e "$KROOT.tmp/lib" ] && [ -d "$KROOT.tmp/usr/lib/modules" ]; then ln -s usr/lib "$KROOT.tmp/lib"; fi
    [ -f "$KROOT.tmp/boot/vmlinuz-$ABI" ] || vm_die "no boot/vmlinuz-$ABI in the image package"
    depmod -b "$KROOT.tmp" "$ABI"
    rm -rf "$KROOT"
    mv "$KROOT.tmp" "$KROOT"
    touch "$KROOT/.vm-done"
fi
[ -f "$KROOT/.vm-done" ] || vm_die "no kernel tree for $ABI"
KDIR=$KROOT/usr/src/linux-headers-$ABI
# The amd64 headers' Makefile includes the -common tree by absolute /usr/src path: point it at ours
# (done on every run, so a moved cache directory heals itself).
sed -i "s|^include .*/usr/src/linux-headers-$KREL-common/|include $KROOT/usr/src/linux-headers-$KREL-common/|" "$KDIR/Makefile"
grep -q "^include $KROOT/usr/src/" "$KDIR/Makefile" || vm_die "cannot redirect the include in $KDIR/Makefile"

# ---------------------------------------------------------------- out-of-tree media modules
OOT=$VM_CACHE/oot/$ABI
OOT_HASH=$(cat "$VM_DIR/oot/Kbuild" "$VM_DIR/oot/visl.Kbuild" "$VM_DIR/oot/vicodec.Kbuild" | sha256sum | cut -c1-16)
if [ "$(cat "$OOT/.vm-done" 2>/dev/null)" != "$OOT_HASH" ]; then
    SRC=$VM_CACHE/src/$ABI
    if [ ! -f "$SRC/.vm-done" ]; then
        download_debs "linux-source-$VM_KERNEL_SERIES"
        vm_log "extracting media driver sources from linux-source-$VM_KERNEL_SERIES"
        rm -rf "$SRC"
        mkdir -p "$SRC"
        top=linux-source-$VM_KERNEL_SERIES
        dpkg-deb --fsys-tarfile "$DEBS/linux-source-${VM_KERNEL_SERIES}_"*.deb |
            tar -xO "./usr/src/$top.tar.xz" |
            tar -xJ -C "$SRC" --strip-components=1 \
                "$top/drivers/media/v4l2-core/v4l2-mem2mem.c" \
                "$top/drivers/media/test-drivers/visl" \
                "$top/drivers/media/test-drivers/vicodec" \
                "$top/drivers/media/test-drivers/vim2m.c"
        touch "$SRC/.vm-done"
    fi
    vm_log "building v4l2-mem2mem, visl, vicodec, vim2m for $ABI"
    rm -rf "$OOT"
    mkdir -p "$OOT/visl" "$OOT/vicodec"
    M=$SRC/drivers/media
    cp "$M/v4l2-core/v4l2-mem2mem.c" "$M/test-drivers/vim2m.c" "$OOT/"
    cp "$M"/test-drivers/visl/*.[ch] "$OOT/visl/"
    cp "$M"/test-drivers/vicodec/*.[ch] "$OOT/vicodec/"
    cp "$VM_DIR/oot/Kbuild" "$OOT/Kbuild"
    cp "$VM_DIR/oot/visl.Kbuild" "$OOT/visl/Kbuild"
    cp "$VM_DIR/oot/vicodec.Kbuild" "$OOT/vicodec/Kbuild"
    # the trace headers name their own directory relative to the kernel tree; out of tree, the
    # directory is simply the source dir (-I$(src) in visl.Kbuild)
    sed -i 's|^#define TRACE_INCLUDE_PATH .*|#define TRACE_INCLUDE_PATH .|' "$OOT"/visl/visl-trace-*.h
    make -s -C "$KDIR" M="$OOT" -j"${VM_JOBS:-2}" modules >"$OOT/build.log" 2>&1 ||
        { tail -30 "$OOT/build.log" >&2; vm_die "out-of-tree media modules failed to build"; }
    echo "$OOT_HASH" >"$OOT/.vm-done"
fi

# ---------------------------------------------------------------- trixie userspace root
ROOTFS=$VM_CACHE/rootfs
mapfile -t PKGS < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$VM_DIR/guest-packages.txt")
ROOT_HASH=$( (printf '%s\n' "${PKGS[@]}"; cat "$VM_DIR/mkrootfs.sh") | sha256sum | cut -c1-16)
if [ "$(cat "$ROOTFS/.vm-stamp" 2>/dev/null)" != "$ROOT_HASH" ]; then
    bash "$VM_DIR/mkrootfs.sh" "$ROOTFS.tmp" "${PKGS[@]}"
    echo "$ROOT_HASH" >"$ROOTFS.tmp/.vm-stamp"
    rm -rf "$ROOTFS"
    mv "$ROOTFS.tmp" "$ROOTFS"
fi

# ---------------------------------------------------------------- modules inside the root
GMOD=$ROOTFS/usr/lib/modules/$ABI
MOD_STAMP="$OOT_HASH $ROOT_HASH"
if [ "$(cat "$GMOD/.vm-stamp" 2>/dev/null)" != "$MOD_STAMP" ]; then
    vm_log "installing $ABI modules into the guest root"
    rm -rf "$GMOD"
    mkdir -p "$(dirname "$GMOD")"
    # hard links: no copy of the ~100 MB tree; depmod replaces (never rewrites) its index files
    cp -al "$KROOT/lib/modules/$ABI" "$GMOD"
    rm -f "$GMOD"/modules.*
    cp "$KROOT/lib/modules/$ABI"/modules.{order,builtin,builtin.modinfo} "$GMOD/"
    mkdir -p "$GMOD/updates"
    find "$OOT" -name '*.ko' -exec cp {} "$GMOD/updates/" \;
    depmod -b "$ROOTFS" "$ABI"
    echo "$MOD_STAMP" >"$GMOD/.vm-stamp"
fi

# ---------------------------------------------------------------- host libraries for host binaries
# Binaries built on the host link against bookworm libraries (libavcodec.so.59, libdav1d.so.6...)
# that trixie has under newer sonames. Every host library whose soname the guest root lacks is
# hard-linked (copied across file systems) into one directory on the guest's library path; sonames
# present in both resolve to trixie's own (newer, compatible) copy, so trixie's tools are unaffected.
COMPAT=$ROOTFS/usr/local/lib/vm-host-libs
# "soname path" of the host's libraries; the guest's sonames apart from this directory's own
host_libs=$(ldconfig -p | awk '/x86-64/ && $1 ~ /\.so\./ && !seen[$1]++ {print $1, $NF}')
guest_sonames=$(ldconfig -C "$ROOTFS/etc/ld.so.cache" -p |
    awk '/x86-64/ && $NF !~ "^/usr/local/lib/vm-host-libs/" {print $1}')
host_only=$(awk 'NR==FNR {g[$1]=1; next} !($1 in g)' <(echo "$guest_sonames") <(echo "$host_libs"))
COMPAT_STAMP=$( (echo "$host_only"; awk '{print $2}' <<<"$host_only" | xargs -r stat -L -c '%i %Y %s' 2>/dev/null) |
    sha256sum | cut -c1-16)
if [ "$(cat "$COMPAT/.vm-stamp" 2>/dev/null)" != "$COMPAT_STAMP" ]; then
    vm_log "linking $(grep -c . <<<"$host_only") host-only libraries into the guest root"
    rm -rf "$COMPAT"
    mkdir -p "$COMPAT"
    while read -r so path; do
        [ -n "$so" ] || continue
        real=$(readlink -f "$path")
        ln "$real" "$COMPAT/$so" 2>/dev/null || cp "$real" "$COMPAT/$so"
    done <<<"$host_only"
    echo /usr/local/lib/vm-host-libs >"$ROOTFS/etc/ld.so.conf.d/zz-vm-host-libs.conf"
    chroot "$ROOTFS" /sbin/ldconfig
    echo "$COMPAT_STAMP" >"$COMPAT/.vm-stamp"
fi

# ---------------------------------------------------------------- initramfs
# Only what is needed to mount the 9p root: everything else is modprobe'd from the trixie root.
INITRD_MODS="9p 9pnet_virtio"
IN_HASH=$( (cat "$VM_DIR/guest/init" /bin/busybox; echo "$INITRD_MODS v2") | sha256sum | cut -c1-16)
INITRD=$VM_CACHE/initrd-$ABI-$IN_HASH.cpio.gz
if [ ! -f "$INITRD" ]; then
    vm_log "building initramfs"
    S=$(mktemp -d "$VM_CACHE/initrd.XXXXXX")
    trap 'rm -rf "$S"' EXIT
    mkdir -p "$S"/{bin,proc,sys,dev,tmp,r,ctl,mod}
    cp /bin/busybox "$S/bin/busybox"
    ln -s busybox "$S/bin/sh"
    for m in $INITRD_MODS; do modprobe -d "$KROOT" -S "$ABI" --show-depends "$m"; done | awk '!seen[$0]++' | awk '$1=="insmod"{print $2}' |
        while read -r ko; do
            base=$(basename "${ko%.xz}")
            case $ko in *.xz) xz -dc "$ko" >"$S/mod/$base" ;; *) cp "$ko" "$S/mod/$base" ;; esac
            echo "$base" >>"$S/mod/order"
        done
    install -m 755 "$VM_DIR/guest/init" "$S/init"
    (cd "$S" && find . | cpio -o -H newc --quiet | gzip -1) >"$INITRD.tmp"
    mv "$INITRD.tmp" "$INITRD"
    rm -rf "$S"
    trap - EXIT
fi

echo "$ABI" >"$VM_CACHE/current-kernel"
ln -sfn "initrd-$ABI-$IN_HASH.cpio.gz" "$VM_CACHE/initrd.cpio.gz"
echo "$ABI"
