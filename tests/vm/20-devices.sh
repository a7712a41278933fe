#!/usr/bin/env bash
# Guest check: the kernel interfaces the daemon and the kernel module rely on are present and
# usable: CUSE (/dev/cuse opens), udmabuf, the system dma-heap, the media request API (mc.ko),
# and the guest kernel is the Debian 6.12 build the host's vm/kdir points at.
set -euo pipefail
case $(uname -r) in 6.12.*) ;; *) echo "unexpected kernel $(uname -r)"; exit 1 ;; esac
[ "$(uname -r)" = "$VM_KERNEL" ] || { echo "guest runs $(uname -r), harness expected $VM_KERNEL"; exit 1; }
grep -qw cuse /proc/misc || { echo "cuse is not a misc device"; exit 1; }
exec 3<>/dev/cuse   # a CUSE server starts exactly like this
exec 3>&-
for n in /dev/udmabuf /dev/dma_heap/system /dev/fuse; do
    [ -c "$n" ] || { echo "missing $n"; exit 1; }
done
grep -q '^mc ' /proc/modules || { echo "mc (media controller + request API) not loaded"; exit 1; }
grep -q 'media_request_alloc\|media_request_get_by_fd' /proc/kallsyms || { echo "no request API symbols"; exit 1; }
echo "devices: cuse udmabuf dma_heap/system fuse mc OK on $(uname -r)"
