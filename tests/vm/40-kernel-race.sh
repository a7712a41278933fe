#!/usr/bin/env bash
# Guest check (issue #6, the fail-fast race): the daemon is SIGKILLed at a random moment of a
# running decode, 30 times, so that its detach lands before, during and after device_run's
# dispatch of a job. Every time the client must end by itself, with no task in D state: every job
# completes (DONE, ERROR from the drain, or ERROR from fail-fast for the rest of the stream, which
# the client keeps submitting: up to 150 jobs, bounded at 30 s under TCG). Afterwards a
# new daemon attaches and a decode is frame-exact, the refcount is 0 and rmmod succeeds.
# vm-timeout: 900
set -euo pipefail
# shellcheck source=tests/vm/40-kernel-lib.sh
. "$(dirname "$0")/40-kernel-lib.sh"
bin=$target/release/daedalus
[ -x "$bin" ] || { echo "missing $bin"; exit 1; }
ffmpeg -v error -f lavfi -i testsrc2=size=320x240:rate=25 -frames:v 150 -pix_fmt yuv420p -c:v libx264 -bf 2 "$work/long.h264"
ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 10 -pix_fmt yuv420p -c:v libx264 "$work/s.h264"
ffmpeg -v error -i "$work/s.h264" -pix_fmt nv12 -f framemd5 "$work/ref.md5"

dmesg -c >/dev/null
kload
ended=0 killed_mid=0 slowest=0 detaches=0
for i in $(seq 30); do
    dmesg -c >/dev/null # start_daemon waits for this round's "daemon attached"
    start_daemon
    "$bin" decode "$work/long.h264" --device "$dev" >/dev/null 2>"$work/client.err" &
    client=$!
    # 0 to 1.5 s into the decode: before, during or after a dispatch.
    sleep "$(awk -v r="$RANDOM" 'BEGIN { printf "%.3f", (r % 1500) / 1000 }')"
    kill -KILL "$daemon"
    wait "$daemon" 2>/dev/null || true
    daemon=
    if ! gone "$client" 30 >/dev/null; then
        echo "round $i: client still running 30 s after the daemon died"; cat "/proc/$client/stack" 2>/dev/null || true
        kill -KILL "$client"; exit 1
    fi
    [ "$gone_ms" -gt "$slowest" ] && slowest=$gone_ms
    status=0
    wait "$client" || status=$?
    [ "$status" -ne 0 ] && killed_mid=$((killed_mid + 1))
    ended=$((ended + 1))
    no_d_state
    detaches=$((detaches + $(dmesg | grep -c 'daemon detached' || true)))
done
echo "race: $ended/30 clients ended by themselves after the daemon's SIGKILL ($killed_mid of them mid-decode, with ERROR pictures; slowest $slowest ms)"
echo "detaches logged: $detaches"
[ "$detaches" -eq 30 ] || { echo "expected one detach per round"; exit 1; }

start_daemon
"$bin" decode "$work/s.h264" --device "$dev" --framemd5 "$work/out.md5" 2>"$work/client.err" ||
    { cat "$work/client.err"; echo "decode after the races failed"; exit 1; }
[ "$(hashes "$work/out.md5")" = "$(hashes "$work/ref.md5")" ] || { echo "decode after the races differs from FFmpeg"; exit 1; }
stop_daemon
[ "$(refcount)" = 0 ] || { echo "refcount $(refcount)"; exit 1; }
rmmod daedalus
echo "40-kernel-race: OK"
