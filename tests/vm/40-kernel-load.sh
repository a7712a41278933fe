#!/usr/bin/env bash
# Guest check (issue #6, a): kernel/daedalus.ko loads, registers /dev/videoN, /dev/mediaN and
# /dev/daedalus-bridge (0600) with bus_info "platform:daedalus" on both nodes, a PROC_VIDEO_DECODER
# entity, the five coded formats; one daemon at a time on the bridge (EBUSY); unloads with
# refcount 0, and loads again.
# vm-timeout: 300
set -euo pipefail
# shellcheck source=tests/vm/40-kernel-lib.sh
. "$(dirname "$0")/40-kernel-lib.sh"

kload
echo "video $dev, media $media"
[ "$(stat -c %a "$bridge")" = 600 ] || { echo "bridge mode $(stat -c %a "$bridge")"; exit 1; }
v4l2-ctl -d "$dev" -D | tee "$work/caps"
grep -q 'Bus info *: platform:daedalus' "$work/caps" || { echo "video bus_info"; exit 1; }
media-ctl -d "$media" -p | tee "$work/topo" | head -20
grep -q 'bus info *platform:daedalus' "$work/topo" || { echo "media bus_info"; exit 1; }
grep -q "'daedalus-proc' (Video Decoder)" "$work/caps" || { echo "no decoder entity"; exit 1; }
fmts=$(v4l2-ctl -d "$dev" --list-formats-out | grep -c "^\s*\[")
[ "$fmts" -eq 5 ] || { echo "$fmts coded formats"; exit 1; }

# One daemon at a time: the second open fails with EBUSY; garbage ends the connection (EPROTO,
# then EPIPE); a reopen after close works. (The guest has no python: bash redirections.)
exec 3<>"$bridge"
if (exec 4<>"$bridge") 2>"$work/busy"; then echo "second open succeeded"; exit 1; fi
grep -q 'busy' "$work/busy" || { cat "$work/busy"; echo "second open: not EBUSY"; exit 1; }
if (exec 4<"$bridge") 2>/dev/null; then echo "read-only open succeeded"; exit 1; fi
if printf 'garbage garbage!' >&3 2>"$work/proto"; then echo "garbage accepted"; exit 1; fi
grep -qi 'protocol error' "$work/proto" || { cat "$work/proto"; echo "garbage: not EPROTO"; exit 1; }
if printf 'again again again' >&3 2>"$work/pipe"; then echo "write after the end accepted"; exit 1; fi
grep -qi 'broken pipe' "$work/pipe" || { cat "$work/pipe"; echo "after the end: not EPIPE"; exit 1; }
exec 3>&-
exec 3<>"$bridge"
exec 3>&-
echo "bridge: EBUSY for a second daemon, EPROTO for garbage then EPIPE, reopen ok"

[ "$(refcount)" = 0 ] || { echo "refcount $(refcount)"; exit 1; }
rmmod daedalus
[ ! -e "$bridge" ] || { echo "bridge still there"; exit 1; }
kload
rmmod daedalus
klog=$(dmesg --level=emerg,alert,crit,err)
[ -z "$klog" ] || { echo "kernel log: $klog"; exit 1; }
echo "40-kernel-load: OK"
