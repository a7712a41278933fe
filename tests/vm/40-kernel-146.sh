#!/usr/bin/env bash
# Guest check (issue #6, d): the #146 hang. The daemon is stopped (SIGSTOP) with a decode's job in
# flight, then SIGKILLed, then the client is SIGKILLed: the client is gone within 1 s, no task is
# in D state, the module's refcount drops to 0, rmmod succeeds and the module loads again. Then
# the other order (tests/scenarios/146-client-killed-first.scn): the client is killed while its
# job sits at the stopped daemon. The job deadline is 60 s here, so only the detach / job_abort
# paths can end the jobs.
# vm-timeout: 300
set -euo pipefail
# shellcheck source=tests/vm/40-kernel-lib.sh
. "$(dirname "$0")/40-kernel-lib.sh"
bin=$target/release/daedalus
[ -x "$bin" ] || { echo "missing $bin"; exit 1; }
ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 50 -pix_fmt yuv420p -c:v libx264 "$work/long.h264"


run() {
    local order=$1 client
    dmesg -c >/dev/null
    kload job_timeout_ms=60000
    start_daemon
    kill -STOP "$daemon"
    "$bin" decode "$work/long.h264" --device "$dev" --framemd5 "$work/out.md5" 2>"$work/client.err" &
    client=$!
    sleep 3 # the client opens, sets up, queues: its first job goes to the stopped daemon
    [ -e "/proc/$client" ] || { cat "$work/client.err"; echo "$order: client exited before the kill"; exit 1; }
    [ "$(refcount)" -ge 2 ] || { echo "$order: refcount $(refcount) with daemon and client"; exit 1; }
    if [ "$order" = daemon-first ]; then
        kill -KILL "$daemon"
        wait "$daemon" 2>/dev/null || true
        daemon=
        kill -KILL "$client" 2>/dev/null || true
        gone "$client" || exit 1
    else
        kill -KILL "$client"
        gone "$client" || exit 1
        kill -KILL "$daemon"
        wait "$daemon" 2>/dev/null || true
        daemon=
    fi
    wait "$client" 2>/dev/null || true
    no_d_state
    for _ in $(seq 50); do [ "$(refcount)" = 0 ] && break; sleep 0.1; done
    [ "$(refcount)" = 0 ] || { echo "$order: refcount $(refcount)"; exit 1; }
    rmmod daedalus
    echo "$order: rmmod ok"
    dmesg | grep 'daemon detached' || true
    # daemon-first: the detach itself failed the job in flight (not a deadline, not close).
    if [ "$order" = daemon-first ]; then
        dmesg | grep -q 'daemon detached (bridge closed): 1 jobs in flight failed' ||
            { echo "$order: the detach did not drain the job in flight"; exit 1; }
    fi
}

run daemon-first
run client-first
kload
rmmod daedalus
echo "reload ok"
echo "40-kernel-146: OK"
