#!/usr/bin/env bash
# Installs the host packages the VM harness needs (idempotent; quiet when nothing is missing).
#   qemu-system-x86      the emulator (KVM when usable, TCG otherwise)
#   busybox-static       /init of the guest initramfs
#   cpio kmod zstd xz-utils  initramfs packing, depmod/modinfo, module decompression
#   dwarves              pahole, needed by the BTF step of out-of-tree module builds
#   gcc make bc flex bison libelf-dev  kbuild for out-of-tree modules (host gcc-12 = Debian's kernel compiler)
#   mmdebstrap           builds the trixie guest userspace root
#   util-linux           setpriv --pdeathsig (no orphaned qemu)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(qemu-system-x86 busybox-static cpio kmod zstd xz-utils dwarves gcc make bc flex bison
      libelf-dev mmdebstrap util-linux debian-archive-keyring ca-certificates)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "vm: installing host packages: ${missing[*]}" >&2
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The guest userspace comes from trixie: make the suite known to apt (pinned low, host stays bookworm).
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$here/scripts/apt-suite.sh" trixie
