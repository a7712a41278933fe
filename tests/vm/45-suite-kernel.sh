#!/usr/bin/env bash
# Guest check: the shared V4L2 suite against the kernel module (kernel/daedalus.ko), for MMAP and
# DMABUF buffers: every decoder-core scenario (tests/scenarios/*.scn) through real ioctls, with
# daedalus-test-daemon on /dev/daedalus-bridge spawned, SIGSTOPped, SIGKILLed and commanded by the
# suite; `badinput` (client mistakes, the kernel's errnos); and `decode` of a small H.264 stream
# with the real daedalus-daemon attached (framemd5 identical to FFmpeg's own decode).
# Needs host builds: make -C kernel KDIR=$(vm/kdir) KBUILD_EXTRA_SYMBOLS=$(vm/kdir --symvers) and
# cargo build --release -p daedalus -p daedalus-daemon -p daedalus-test-daemon -p daedalus-v4l2-suite
# vm-timeout: 900
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
suite=$target/release/daedalus-v4l2-suite
ko=$root/kernel/daedalus.ko
bridge=/dev/daedalus-bridge
for b in "$suite" "$target/release/daedalus" "$target/release/daedalus-daemon" "$target/release/daedalus-test-daemon"; do
    [ -x "$b" ] || { echo "missing $b"; exit 1; }
done
[ -f "$ko" ] || { echo "missing $ko: make -C kernel KDIR=\$(vm/kdir) KBUILD_EXTRA_SYMBOLS=\$(vm/kdir --symvers)"; exit 1; }
work=$(mktemp -d)
daemon=
trap '[ -z "$daemon" ] || kill -KILL "$daemon" 2>/dev/null || true; rm -rf "$work"' EXIT

insmod "$ko"
for _ in $(seq 50); do [ -e "$bridge" ] && break; sleep 0.1; done
dev= media=
for n in /sys/class/video4linux/video*; do [ "$(cat "$n/name")" = daedalus ] && dev=/dev/${n##*/}; done
for m in /sys/bus/media/devices/media*; do [ "$(cat "$m/model" 2>/dev/null)" = daedalus ] && media=/dev/${m##*/}; done
[ -n "$dev" ] && [ -n "$media" ] && [ -c "$bridge" ] || { echo "daedalus nodes missing"; exit 1; }
echo "daedalus: $dev $media $bridge"

ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 10 -pix_fmt yuv420p -c:v libx264 -profile:v main -bf 2 -g 6 "$work/s.h264"
ffmpeg -v error -i "$work/s.h264" -pix_fmt nv12 -f framemd5 "$work/ref"
hashes() { grep -v '^#' "$1" | awk -F, '{gsub(/ /, "", $6); print $6}'; }

fails=0
for mem in mmap dmabuf; do
    "$suite" --device "$dev" --media "$media" --memory $mem --bridge "$bridge" scenario "$root"/tests/scenarios/*.scn || fails=$((fails + 1))
    "$suite" --device "$dev" --media "$media" --memory $mem --requests-optional badinput || fails=$((fails + 1))
    dmesg -C
    "$target/release/daedalus-daemon" --bridge "$bridge" >"$work/daemon.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do dmesg | grep -q 'daemon attached' && break; sleep 0.1; done
    dmesg | grep -q 'daemon attached' || { cat "$work/daemon.log"; echo "daedalus-daemon did not attach"; fails=$((fails + 1)); }
    "$suite" --device "$dev" --media "$media" --memory $mem decode "$work/s.h264" --framemd5 "$work/$mem.md5" || fails=$((fails + 1))
    kill -TERM "$daemon" 2>/dev/null || true; wait "$daemon" || true; daemon=
    if [ -f "$work/$mem.md5" ] && [ "$(hashes "$work/$mem.md5")" = "$(hashes "$work/ref")" ]; then
        echo "decode ($mem): framemd5 identical to FFmpeg's"
    else
        echo "decode ($mem): framemd5 differs from FFmpeg's"; fails=$((fails + 1))
        hashes "$work/ref" >"$work/ref.h"; hashes "$work/$mem.md5" >"$work/$mem.h" 2>/dev/null || true
        diff "$work/ref.h" "$work/$mem.h" | head -5 || true
        head -4 "$work/ref" "$work/$mem.md5" 2>/dev/null || true
    fi
done
# D-state tasks would be the #146 hang.
d=$(ps -eo stat=,pid=,comm= | awk '$1 ~ /^D/' || true)
[ -z "$d" ] || { echo "tasks in D state: $d"; fails=$((fails + 1)); }
[ "$fails" -eq 0 ] || { echo "45-suite-kernel: $fails failed runs"; exit 1; }
echo "45-suite-kernel: OK"
