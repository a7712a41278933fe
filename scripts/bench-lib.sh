# Timing helpers shared by scripts/bench.sh (host) and scripts/bench-vm.sh (guest). Source it.
# Times are wall-clock seconds; "fail" stands for a run that failed.

# bench_time CMD...: one run of CMD. Its output goes to $BENCH_LOG (default: discarded); on
# failure that log is copied to stderr.
bench_time() {
    local t0 t1 log=${BENCH_LOG:-/dev/null}
    t0=$(date +%s.%N)
    if ! "$@" >"$log" 2>&1; then
        [ "$log" = /dev/null ] || cat "$log" >&2
        echo fail
        return
    fi
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }'
}

# tmin A B: the smaller time; empty A means none yet; a failure is kept.
tmin() {
    if [ "$1" = fail ] || [ "$2" = fail ]; then echo fail; return; fi
    awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b < a) ? b : a }'
}

# best N CMD...: the best of N runs.
best() {
    local n=$1 b="" t
    shift
    for _ in $(seq "$n"); do
        t=$(bench_time "$@")
        b=$(tmin "$b" "$t")
        [ "$b" = fail ] && break
    done
    echo "$b"
}
