#!/usr/bin/env bash
# Streams for scripts/bench-vm.sh, made on the host (encoding in the emulated guest is slow):
# 640x360 H.264, VP9 and AV1 in .cache/bench-vm, each as a 10-frame and a 190-frame stream (the
# benchmark times the difference: start-up and set-up cancel out).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/.cache/bench-vm
mkdir -p "$dir"
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
for n in 10 190; do
    src="-f lavfi -i testsrc2=size=640x360:rate=30,format=yuv420p -frames:v $n"
    [ -s "$dir/h264-$n.h264" ] || ff $src -c:v libx264 -preset veryfast -bf 3 "$dir/h264-$n.h264"
    [ -s "$dir/vp9-$n.ivf" ] || ff $src -c:v libvpx-vp9 -deadline realtime -cpu-used 8 -b:v 1M "$dir/vp9-$n.ivf"
    [ -s "$dir/av1-$n.ivf" ] || ff $src -c:v libsvtav1 -preset 12 -svtav1-params log-level=0 "$dir/av1-$n.ivf" 2>/dev/null
done
