#!/usr/bin/env bash
# Guest check (issue #6, e + deadline): with no daemon attached, a decode through daedalus.ko
# fails fast (ERROR buffers, exit status != 0, within seconds, no hang); once a daemon attaches
# the same decode succeeds. Then the deadline watchdog: with job_timeout_ms=500 and the daemon
# stopped (SIGSTOP), the decode fails with ERROR instead of hanging; after SIGCONT the daemon's
# late results are ignored (zombie acks) and the next decode is frame-exact again.
# vm-timeout: 300
set -euo pipefail
# shellcheck source=tests/vm/40-kernel-lib.sh
. "$(dirname "$0")/40-kernel-lib.sh"
bin=$target/release/daedalus
[ -x "$bin" ] || { echo "missing $bin"; exit 1; }
ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 10 -pix_fmt yuv420p -c:v libx264 "$work/s.h264"
ffmpeg -v error -i "$work/s.h264" -pix_fmt nv12 -f framemd5 "$work/ref.md5"

# decode_timed LIMIT_S: runs the decode under `timeout`; sets $status and $ms.
decode_timed() {
    local t0 t1
    status=0
    t0=$(date +%s%N)
    timeout "$1" "$bin" decode "$work/s.h264" --device "$dev" --framemd5 "$work/out.md5" 2>"$work/err" || status=$?
    t1=$(date +%s%N)
    ms=$(((t1 - t0) / 1000000))
}

dmesg -c >/dev/null
kload job_timeout_ms=500
decode_timed 20
[ "$status" -ne 124 ] || { echo "no daemon: decode hung"; exit 1; }
[ "$status" -ne 0 ] || { echo "no daemon: decode succeeded?"; exit 1; }
tail -3 "$work/err"
echo "no daemon: decode failed fast, status $status in $ms ms"

start_daemon
decode_timed 60
[ "$status" -eq 0 ] || { cat "$work/err"; echo "with daemon: status $status"; exit 1; }
hashes "$work/ref.md5" >"$work/r"
hashes "$work/out.md5" | cmp -s - "$work/r" || { echo "with daemon: frames differ"; exit 1; }
echo "with daemon: frame-exact in $ms ms"

kill -STOP "$daemon"
decode_timed 60
kill -CONT "$daemon"
[ "$status" -ne 124 ] || { echo "stopped daemon: decode hung past the deadline"; exit 1; }
[ "$status" -ne 0 ] || { echo "stopped daemon: decode succeeded?"; exit 1; }
echo "stopped daemon: decode failed by the deadline, status $status in $ms ms"
sleep 1
decode_timed 60
[ "$status" -eq 0 ] || { cat "$work/err"; tail "$work/daemon.log"; echo "after SIGCONT: status $status"; exit 1; }
hashes "$work/ref.md5" >"$work/r"
hashes "$work/out.md5" | cmp -s - "$work/r" || { echo "after SIGCONT: frames differ"; exit 1; }
echo "after SIGCONT: frame-exact again"
stop_daemon
no_d_state
rmmod daedalus
dmesg | grep 'daedalus' || true
echo "40-kernel-failfast: OK"
