#!/usr/bin/env bash
# Guest check: the out-of-tree media modules (v4l2-mem2mem, visl, vicodec, vim2m) load, create
# their video/media nodes, and unload cleanly, twice (leaks or refcount bugs show up as a failed
# rmmod or as a kernel WARN, which vm/run.sh turns into a failed run).
set -euo pipefail
count() { ls /sys/class/video4linux 2>/dev/null | wc -l; }
base=$(count)
for round in 1 2; do
    modprobe visl
    modprobe vicodec
    modprobe vim2m
    n=$(count)
    names=$(cat /sys/class/video4linux/*/name | sort | tr '\n' ' ')
    echo "round $round: $((n - base)) video nodes: $names"
    [ $((n - base)) -eq 5 ] || { echo "expected 5 new video nodes (visl 1, vicodec 3, vim2m 1)"; exit 1; }
    for want in visl stateful-encoder stateful-decoder stateless-decoder; do
        grep -qw -- "$want" <<<"$names" || { echo "missing node $want"; exit 1; }
    done
    ls /dev/media* >/dev/null
    rmmod vim2m vicodec visl
    [ "$(count)" -eq "$base" ] || { echo "nodes left after rmmod"; exit 1; }
done
# v4l2-mem2mem stays loaded (loaded at boot for every test) and unused again
used=$(awk '$1=="v4l2_mem2mem"{print $3}' /proc/modules)
[ "$used" = 0 ] || { echo "v4l2_mem2mem still used by $used"; exit 1; }
echo "media modules: load/unload x2 OK"
