#!/usr/bin/env bash
# Builds the guest's trixie userspace root with mmdebstrap (no host package is touched).
# Usage: vm/mkrootfs.sh OUTDIR PACKAGE...
# The mirror is the one this machine's apt already uses (vm_debian_mirror), never a fixed host.
# Afterwards a GStreamer registry is generated once on the host (chroot) so each guest boot only
# rescans the few plugins whose device dependencies changed (v4l2codecs watches /dev/media*).
set -euo pipefail
# shellcheck source=vm/lib.sh
. "$(dirname "$0")/lib.sh"
out=$1
shift
mirror=$(vm_debian_mirror) || vm_die "no Debian mirror in this machine's apt sources"
rm -rf "$out"
vm_log "building the $VM_USERSPACE_SUITE guest root ($# packages + deps) in $out"
inc=$(IFS=,; echo "$*")
mmdebstrap --quiet --variant=essential --mode=root --include="$inc" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='mkdir -p "$1/usr/local/lib/vm"' \
    --customize-hook='chroot "$1" env GST_REGISTRY=/usr/local/lib/vm/gst-registry.bin gst-inspect-1.0 >/dev/null 2>&1 || true' \
    --customize-hook='rm -f "$1"/var/cache/apt/*.bin; rm -rf "$1"/var/lib/apt/lists/*' \
    "$VM_USERSPACE_SUITE" "$out" "deb $mirror $VM_USERSPACE_SUITE main"
[ -x "$out/usr/bin/v4l2-compliance" ] || vm_die "guest root has no v4l2-compliance"
du -sh "$out" | awk '{print "vm: guest root " $1}' >&2
