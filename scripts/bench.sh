#!/usr/bin/env bash
# Benchmarks `daedalus decode` (embedded stack) against a direct decode of the
# same 1080p stream by libavcodec / dav1d with the same thread count, in one
# run, and prints frames/s and their ratio per codec, two ways:
# - whole process: `daedalus decode` against `ffmpeg -c:v DECODER -f null`,
#   start-up included (ffmpeg's, ~0.1 s here, is the heavier of the two);
# - decode loop: the time `daedalus decode` prints for its loop against
#   examples/plain_decode, the same libraries driven directly in one
#   process with their own allocators, start-up left out on both sides.
#   This is the stricter figure: nothing but the decoding is compared.
# With one thread it then splits the decode-loop ratio in two with
# examples/backend_alone, the daemon's own backend session fed the same
# jobs directly (no frontend, protocol or hand-offs): backend alone against
# plain (what decoding through controls into CAPTURE buffers costs), and
# daedalus against backend alone (what the stack around the backend costs).
# Then the per-job overhead outside the backend's decode call (the first
# job of a context, which also waits for the backend session to open, apart).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/release/daedalus
dir=$root/.cache/bench
frames=${BENCH_FRAMES:-120}
threads=${BENCH_THREADS:-1}
mkdir -p "$dir"
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
src="-f lavfi -i testsrc2=size=1920x1080:rate=30,format=yuv420p -frames:v $frames"
[ -s "$dir/h264.h264" ] || ff $src -c:v libx264 -preset veryfast -bf 3 "$dir/h264.h264"
[ -s "$dir/hevc.hevc" ] || ff $src -c:v libx265 -preset veryfast -x265-params log-level=error "$dir/hevc.hevc"
[ -s "$dir/vp9.ivf" ] || ff $src -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 4M "$dir/vp9.ivf"
[ -s "$dir/av1.ivf" ] || ff $src -c:v libsvtav1 -preset 12 "$dir/av1.ivf"

# Both decoders run at the same priority. BENCH_PRIO=rt (the default when
# permitted) runs them SCHED_FIFO so that other processes on the machine do
# not land in the measurement; BENCH_PRIO=normal runs them as they are.
prio=()
case ${BENCH_PRIO:-auto} in
    normal) ;;
    rt) prio=(chrt -f 10) ;;
    auto) if chrt -f 10 true 2>/dev/null; then prio=(chrt -f 10); fi ;;
    *) echo "BENCH_PRIO: normal or rt" >&2; exit 2 ;;
esac
echo "priority: ${prio[*]:-normal}; load average: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs; $threads decode thread(s)"

# shellcheck source=scripts/bench-lib.sh
. "$root/scripts/bench-lib.sh"
# Runs of each decoder per codec (the best counts), alternating between the
# two so that a slow spell of the machine hits both alike.
runs=${BENCH_RUNS:-7}

plain=${CARGO_TARGET_DIR:-$root/target}/release/examples/plain_decode
alone=${CARGO_TARGET_DIR:-$root/target}/release/examples/backend_alone
for x in "$plain" "$alone"; do
    [ -x "$x" ] || { echo "bench: $x not built (cargo build --release -p daedalus-daemon --example $(basename "$x"))" >&2; exit 2; }
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# loop_secs LOG: the decode-loop seconds a run printed ("N frames in S s"
# from plain_decode; "N frames in S s, F fps" from daedalus, whose fps has
# the finer resolution), or "fail".
loop_secs() {
    awk '$2 == "frames" && $3 == "in" { t = ($7 ~ /^fps/) ? $1 / $6 : $4 }
        END { print (t == "" ? "fail" : t) }' "$1"
}

status=0
stats=()
split=()
printf '%-6s %12s %12s %8s   %12s %12s %8s\n' codec "direct fps" "daedalus fps" ratio "plain loop" "daedalus loop" ratio
for s in h264:h264.h264:h264 hevc:hevc.hevc:hevc vp9:vp9.ivf:vp9 av1:av1.ivf:libdav1d; do
    IFS=: read -r name file dec <<< "$s"
    direct="" ours="" plain_loop="" ours_loop="" alone_loop=""
    for _ in $(seq "$runs"); do
        direct=$(tmin "$direct" "$(bench_time "${prio[@]}" ffmpeg -nostdin -loglevel error -threads "$threads" -c:v "$dec" -i "$dir/$file" -f null -)")
        ours=$(tmin "$ours" "$(BENCH_LOG=$tmp/ours bench_time "${prio[@]}" "$bin" decode "$dir/$file" --threads "$threads")")
        ours_loop=$(tmin "$ours_loop" "$(loop_secs "$tmp/ours")")
        if [ "$threads" = 1 ]; then
            "${prio[@]}" "$plain" "$dir/$file" > "$tmp/plain" 2>&1 || echo fail > "$tmp/plain"
            plain_loop=$(tmin "$plain_loop" "$(loop_secs "$tmp/plain")")
            "${prio[@]}" "$alone" "$dir/$file" > "$tmp/alone" 2>&1 || echo fail > "$tmp/alone"
            alone_loop=$(tmin "$alone_loop" "$(loop_secs "$tmp/alone")")
        fi
    done
    if [ "$direct" = fail ]; then
        printf '%-6s %12s\n' "$name" "direct decode FAILED"; status=1; continue
    fi
    fd=$(awk -v n="$frames" -v t="$direct" 'BEGIN { print n / t }')
    if [ "$ours" = fail ]; then
        printf '%-6s %12.1f %12s %8s\n' "$name" "$fd" FAILED -; status=1; continue
    fi
    fo=$(awk -v n="$frames" -v t="$ours" 'BEGIN { print n / t }')
    if [ -z "$plain_loop" ]; then
        loop="(plain baseline: one thread only)"
    elif [ "$plain_loop" = fail ] || [ "$ours_loop" = fail ]; then
        loop="FAILED"; status=1
    else
        loop=$(awk -v n="$frames" -v a="$plain_loop" -v b="$ours_loop" 'BEGIN { printf "%12.1f %12.1f %8.3f", n / a, n / b, a / b }')
        if [ "$alone_loop" = fail ]; then
            split+=("$name: backend alone FAILED"); status=1
        else
            split+=("$(awk -v m="$name" -v n="$frames" -v p="$plain_loop" -v a="$alone_loop" -v o="$ours_loop" 'BEGIN {
                printf "%-5s backend alone %6.1f fps: %.3f of plain; daedalus %.3f of backend alone", m, n / a, p / a, a / o }')")
        fi
    fi
    printf '%-6s %12.1f %12.1f %8.3f   %s\n' "$name" "$fd" "$fo" "$(awk -v a="$fo" -v b="$fd" 'BEGIN { print a / b }')" "$loop"
    for r in 1 2 3; do
        stats+=("$name, run $r: $("${prio[@]}" "$bin" decode "$dir/$file" --threads "$threads" --job-stats 2>&1 |
            awk '/per-job overhead/ { o = $0 } /first job of each context/ { f = $(NF - 1) " " $NF } END { print o "; first job " f }')")
    done
done
[ ${#split[@]} -eq 0 ] || printf 'decode-loop ratio split in two (their product):\n'
[ ${#split[@]} -eq 0 ] || printf '  %s\n' "${split[@]}"
printf '%s\n' "${stats[@]}"
# What two thread wake-ups cost on this machine right now (a job crosses
# two hand-offs), for reading the overhead above.
floor=${CARGO_TARGET_DIR:-$root/target}/release/examples/wake_floor
if [ -x "$floor" ]; then
    "${prio[@]}" "$floor"
else
    echo "wake-ups: $floor not built (cargo build --release -p daedalus-daemon --example wake_floor)"
fi
exit $status
