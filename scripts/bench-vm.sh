#!/usr/bin/env bash
# The device paths' benchmark, run inside the VM guest (`just bench-vm`, part of `just bench`):
# frames/s of `daedalus decode --device` through the kernel module (MMAP) and through the CUSE
# frontend (USERPTR, under the request launcher), each against a direct FFmpeg decode of the same
# stream with one thread in the same guest, as ratios; and the per-job path cost: the gap between
# one job's backend decode call ending and the next one's starting in the daemon
# (`daedalus-daemon --job-stats`), median and p99. The client keeps several jobs queued, so the
# gap is the cost of the path (result, completion, next dispatch), not of the client.
# The guest is TCG-emulated: absolute figures are far below the host's; the ratios compare
# like with like. Streams come from the host (.cache/bench-vm, made by `just bench-vm`).
# Needs host builds: `just kmod`, cargo build --release --workspace --bins.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
dir=$root/.cache/bench-vm
bin=$target/release/daedalus
daemon_bin=$target/release/daedalus-daemon
cuse=$target/release/daedalus-cuse
ko=$root/kernel/daedalus.ko
for f in "$bin" "$daemon_bin" "$cuse" "$ko"; do
    [ -e "$f" ] || { echo "bench-vm: missing $f"; exit 1; }
done
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=scripts/bench-lib.sh
. "$root/scripts/bench-lib.sh"
export BENCH_LOG=$work/run.log

# marginal SHORT LONG CMD...: seconds for the 180 frames LONG has beyond SHORT, CMD's input given
# as {}: process start-up, probing and device set-up (slow under TCG, and far slower for ffmpeg
# with its 200 libraries) cancel out.
marginal() {
    local short=$1 long=$2 a b; shift 2
    a=$(best 3 "${@//\{\}/$short}")
    b=$(best 3 "${@//\{\}/$long}")
    if [ "$a" = fail ] || [ "$b" = fail ]; then echo fail; return; fi
    awk -v a="$a" -v b="$b" 'BEGIN { print b - a }'
}

# gaps FILE: median and p99 of the gaps between consecutive backend calls (µs)
gaps() {
    sort -n -k2 "$1" | awk 'NR > 1 { g = $2 - end; print (g < 0 ? 0 : g) } { end = $2 + $3 }' |
        sort -n | awk '{ v[NR] = $1 } END {
            if (NR == 0) { print "no samples"; exit }
            m = v[int((NR - 1) * 0.5 + 0.5) + 1]; p = v[int((NR - 1) * 0.99 + 0.5) + 1]
            printf "median %d us, p99 %d us (%d gaps)\n", m, p, NR }'
}

# wait_for COND_CMD...: up to 10 s
wait_for() {
    for _ in $(seq 100); do "$@" && return 0; sleep 0.1; done
    return 1
}

insmod "$ko"
wait_for test -c /dev/daedalus-bridge || { echo "no bridge node"; exit 1; }
kdev=
for n in /sys/class/video4linux/video*; do
    [ "$(cat "$n/name")" = daedalus ] && kdev=/dev/${n##*/}
done
[ -n "$kdev" ] || { echo "no daedalus video node"; exit 1; }

sock=$work/dv.sock
RUST_LOG=warn "$cuse" serve --name video9 --media-name media9 --socket "$sock" --memory userptr \
    >"$work/cuse.log" 2>&1 &
pids+=($!)
wait_for test -S "$sock" || { cat "$work/cuse.log"; echo "CUSE server did not come up"; exit 1; }
wait_for test -e /dev/video9 || { cat "$work/cuse.log"; echo "no /dev/video9"; exit 1; }

# start_daemon [--job-stats FILE] ENDPOINT-ARGS...: a one-thread daemon in the background ($dpid)
start_daemon() {
    # shellcheck disable=SC2086 # BENCH_VM_DAEMON_ARGS: extra daemon arguments, split on spaces
    "$daemon_bin" --threads 1 ${BENCH_VM_DAEMON_ARGS:-} "$@" >>"$work/daemon.log" 2>&1 &
    dpid=$!
    pids+=("$dpid")
    sleep 1
}
stop_daemon() {
    kill -TERM "$dpid" 2>/dev/null || echo "bench-vm: the daemon had died"
    local st=0
    wait "$dpid" 2>/dev/null || st=$?
    [ "$st" = 0 ] || { echo "bench-vm: daemon exit status $st"; tail -20 "$work/daemon.log"; }
}

echo "guest: $(nproc) CPU(s), $(uname -r); one decode thread everywhere"
printf '%-6s %-7s %10s %10s %7s  %s\n' codec path "direct fps" "ours fps" ratio "path cost between jobs"
status=0
for s in h264:h264.h264:h264 vp9:vp9.ivf:vp9 av1:av1.ivf:libdav1d; do
    IFS=: read -r name file dec <<< "$s"
    [[ " ${BENCH_VM_CODECS:-h264 vp9 av1} " == *" $name "* ]] || continue
    short=$dir/${file/./-10.}
    long=$dir/${file/./-190.}
    frames=180
    direct=$(marginal "$short" "$long" ffmpeg -nostdin -v error -threads 1 -c:v "$dec" -i {} -f null -)
    for path in ${BENCH_VM_PATHS:-kernel cuse}; do
        if [ "$path" = kernel ]; then
            endpoint=(--bridge /dev/daedalus-bridge)
            run=("$bin" decode {} --device "$kdev")
        else
            endpoint=(--connect "$sock")
            run=("$cuse" run -- "$bin" decode {} --device /dev/video9 --media /dev/media9 --memory userptr)
        fi
        start_daemon "${endpoint[@]}"
        ours=$(marginal "$short" "$long" "${run[@]}")
        stop_daemon
        # One more decode with the daemon's job stats: one context, one run.
        rm -f "$work/stats"
        start_daemon --job-stats "$work/stats" "${endpoint[@]}"
        "${run[@]//\{\}/$long}" >/dev/null 2>&1 || true
        stop_daemon
        if [ "$direct" = fail ] || [ "$ours" = fail ]; then
            printf '%-6s %-7s FAILED (direct %s, ours %s); daemon log:\n' "$name" "$path" "$direct" "$ours"
            tail -20 "$work/daemon.log"
            status=1
            continue
        fi
        awk -v n="$frames" -v d="$direct" -v o="$ours" -v c="$name" -v p="$path" -v g="$(gaps "$work/stats")" \
            'BEGIN { printf "%-6s %-7s %10.1f %10.1f %7.3f  %s\n", c, p, n / d, n / o, d / o, g }'
    done
done
kill -TERM "${pids[0]}" 2>/dev/null || true
wait "${pids[0]}" 2>/dev/null || true
rmmod daedalus
exit $status
