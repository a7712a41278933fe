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
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ ${#missing[@]} -gt 0 ]; then
    echo "vm: installing host packages: ${missing[*]}" >&2
    apt-get update -qq
    # qemu-system-x86 must come from the suite of the machine's qemu-utils: an image with
    # bookworm-backports' qemu-utils (which Breaks bookworm's qemu-system-common) gets the
    # emulator from bookworm-backports too.
    qemu=()
    case "$(dpkg-query -W -f='${Status} ${Version}' qemu-utils 2>/dev/null)" in
        "install ok installed "*bpo12*)
            for i in "${!missing[@]}"; do
                [ "${missing[$i]}" = qemu-system-x86 ] && { qemu=(qemu-system-x86); unset 'missing[i]'; }
            done ;;
    esac
    if [ ${#qemu[@]} -gt 0 ]; then
        bash "$here/scripts/apt-suite.sh" bookworm-backports
        apt-get install -y -qq --no-install-recommends -t bookworm-backports "${qemu[@]}" >/dev/null
    fi
    [ ${#missing[@]} -eq 0 ] || apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The guest userspace comes from trixie: make the suite known to apt (pinned low, host stays bookworm).
bash "$here/scripts/apt-suite.sh" trixie
