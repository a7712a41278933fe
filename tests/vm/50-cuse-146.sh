#!/usr/bin/env bash
# Guest check of the CUSE frontend (issue #5, c; the original #146 hang): the daemon is SIGKILLed
# while `daedalus decode` has jobs in flight on /dev/video9. The frontend detaches it: every job
# in flight completes with ERROR, later jobs fail fast, so the client gets its buffers back (it
# reports failed pictures and exits), its close returns, nothing sleeps in D state, the server
# lives on. A restarted daemon attaches and a new decode is frame-exact.
# Needs: cargo build --release -p daedalus-cuse -p daedalus-daemon -p daedalus
# vm-timeout: 600
set -euo pipefail
# shellcheck source=tests/vm/50-cuse-lib.sh
. "$(dirname "$0")/50-cuse-lib.sh"
start_server
start_daemon
ffmpeg -v error -f lavfi -i testsrc2=size=320x240:rate=25 -frames:v 220 -pix_fmt yuv420p -c:v libx264 -profile:v main -bf 2 -g 50 "$work/long.h264"
ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 10 -pix_fmt yuv420p -c:v libx264 -profile:v main -bf 2 "$work/short.h264"

decode "$work/long.h264" "$work/long.out" 2>"$work/long.err" & cpid=$!
# Wait until pictures come out (jobs are flowing: the framemd5 file's first buffered write, about
# 100 frames in), then kill the daemon.
for _ in $(seq 600); do
    [ -s "$work/long.out" ] && break
    sleep 0.05
done
kill -0 $cpid 2>/dev/null || { cat "$work/long.err"; echo "client ended before the kill"; exit 1; }
t0=$(date +%s%N)
kill -KILL "$daemon"
wait "$daemon" 2>/dev/null || true
daemon=
# The client must get everything back and exit on its own.
status=0
for _ in $(seq 100); do kill -0 $cpid 2>/dev/null || break; sleep 0.1; done
t1=$(date +%s%N)
if kill -0 $cpid 2>/dev/null; then
    ps -eo pid,stat,wchan:32,args | awk '$2 ~ /D/'
    echo "client still running 10 s after the daemon was killed"
    kill -KILL $cpid
    exit 1
fi
wait $cpid || status=$?
ms=$(((t1 - t0) / 1000000))
frames=$(grep -vc '^#' "$work/long.out" || true)
echo "daemon SIGKILLed: client exited with $status after ${ms} ms, $frames pictures before; $(tail -1 "$work/long.err")"
[ "$status" -ne 0 ] || { echo "the client did not see the failed jobs"; exit 1; }
grep -q "pictures failed" "$work/long.err" || { cat "$work/long.err"; exit 1; }
[ "$ms" -le 5000 ] || { echo "too slow: ${ms} ms"; exit 1; }
d=$(ps -eo stat,args | awk '$1 ~ /^D/' || true)
[ -z "$d" ] || { echo "D-state tasks: $d"; exit 1; }
kill -0 "$server" || { cat "$work/server.log"; echo "server died"; exit 1; }
grep -E "daemon (link ended|detached)" "$work/server.log" | sed "s/\x1b\[[0-9;]*m//g" | head -3

# A new daemon serves new jobs.
[ -n "${CUSE_TRACE:-}" ] && set -x
start_daemon
ffmpeg -v error -i "$work/short.h264" -pix_fmt nv12 -f framemd5 "$work/short.ref"
decode "$work/short.h264" "$work/short.out" 2>"$work/short.err" || { cat "$work/short.err"; exit 1; }
hashes "$work/short.ref" >"$work/a"
hashes "$work/short.out" >"$work/b"
cmp -s "$work/a" "$work/b" || { diff "$work/a" "$work/b" | head; exit 1; }
echo "restarted daemon: $(wc -l <"$work/a") frames frame-exact"
echo "50-cuse-146: OK"
