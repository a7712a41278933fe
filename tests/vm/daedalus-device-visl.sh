#!/usr/bin/env bash
# Guest check: `daedalus decode --device` drives a real V4L2 stateless decoder (visl: the real
# request/stateless uAPI, test-pattern pictures) through a whole H.264 stream with B-frames:
# exit 0 (no CAPTURE buffer came back with V4L2_BUF_FLAG_ERROR: daedalus fails on those), one
# framemd5 line per frame FFmpeg decodes from the same file, and the v4l2r example client decodes
# it too with one result line per picture. Kernel warnings fail the run (vm/run.sh).
# Needs host builds: cargo build --release -p daedalus --bin daedalus --example v4l2_decode
# vm-modprobe: visl
# vm-timeout: 600
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$target/release/daedalus
example=$target/release/examples/v4l2_decode
for b in "$bin" "$example"; do
    [ -x "$b" ] || { echo "missing $b: cargo build --release -p daedalus --bins --example v4l2_decode"; exit 1; }
done

dev=
for n in /sys/class/video4linux/video*; do
    [ "$(cat "$n/name")" = visl ] && dev=/dev/${n##*/}
done
[ -n "$dev" ] || { echo "no visl video node"; exit 1; }
echo "visl: $dev"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# 20 frames, main profile with B-frames (reordering), two IDRs.
ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 20 \
    -c:v libx264 -profile:v main -bf 2 -g 12 -pix_fmt yuv420p "$work/in.h264"
ffmpeg -v error -i "$work/in.h264" -f framemd5 "$work/ref.framemd5"
want=$(grep -vc '^#' "$work/ref.framemd5")
[ "$want" -eq 20 ] || { echo "FFmpeg decodes $want frames, expected the 20 encoded"; exit 1; }

dmesg -c >/dev/null
status=0
"$bin" decode "$work/in.h264" --device "$dev" --framemd5 "$work/out.framemd5" 2>"$work/err" || status=$?
cat "$work/err"
[ "$status" -eq 0 ] || { echo "daedalus decode --device exited $status"; exit 1; }
got=$(grep -vc '^#' "$work/out.framemd5")
echo "daedalus --device $dev: $got framemd5 lines, FFmpeg: $want"
[ "$got" -eq "$want" ] || { echo "frame count mismatch"; exit 1; }
if grep -qi 'error\|failed' "$work/err"; then echo "errors reported"; exit 1; fi

"$example" "$dev" "$work/in.h264" >"$work/ex.out" 2>&1 || { cat "$work/ex.out"; echo "example failed"; exit 1; }
cat "$work/ex.out"
ok=$(grep -c '^frame .* ok$' "$work/ex.out" || true)
[ "$ok" -eq "$want" ] || { echo "example: $ok ok frames, expected $want"; exit 1; }
echo "daedalus-device-visl: OK"
