#!/usr/bin/env bash
# Guest check (issue #6, f): GStreamer's v4l2codecs (v4l2slh264dec, v4l2slh265dec, v4l2slvp8dec,
# v4l2slvp9dec, v4l2slav1dec; HEVC Main10 and VP9 profile 2 to P010) decode through daedalus.ko +
# `daedalus-daemon --bridge`, and every
# picture equals FFmpeg's (per-frame MD5 of the pictures, GStreamer's I420 output converted to NV12). Then a client is SIGKILLed at
# random moments of a decode 100 times (daemon attached); afterwards no task is in D state, the
# refcount is 0 and rmmod succeeds.
# vm-timeout: 1200
set -euo pipefail
# shellcheck source=tests/vm/40-kernel-lib.sh
. "$(dirname "$0")/40-kernel-lib.sh"
bin=$target/release/daedalus
[ -x "$bin" ] || { echo "missing $bin"; exit 1; }

dmesg -c >/dev/null
make_streams
refs_all
kload
start_daemon
pass=0
skipped=
for s in h264.h264:v4l2slh264dec:176x144 hevc.hevc:v4l2slh265dec:128x96 vp8.ivf:v4l2slvp8dec:128x96 \
    vp9.ivf:v4l2slvp9dec:128x96 av1.ivf:v4l2slav1dec:128x96; do
    IFS=: read -r f el size <<<"$s"
    in=$work/$f
    if [ -e "$work/$f.ref.crash" ]; then echo "$f: SKIP (FFmpeg's own decode crashes in this guest)"; skipped="$skipped $f"; continue; fi
    status=0
    timeout 120 gst-launch-1.0 -q filesrc location="$in" ! parsebin ! "$el" ! videoconvert ! \
        video/x-raw,format=I420 ! filesink location="$work/$f.yuv" >"$work/$f.gst" 2>&1 || status=$?
    if [ "$status" -ne 0 ] && dav1d_crashed; then echo "$f: SKIP"; skipped="$skipped $f"; continue; fi
    [ "$status" -eq 0 ] || { cat "$work/$f.gst"; echo "$f: gst-launch exit $status"; exit 1; }
    gst_matches "$el" "$f" "$work/$f.yuv" "$size" "$work/$f.ref" || exit 1
    pass=$((pass + 1))
done

# 10-bit: HEVC Main10 and VP9 profile 2 to P010 (CAPTURE offers P010 once the SPS / frame
# control says 10 bits), equal to FFmpeg's p010le pictures.
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -pix_fmt yuv420p10le -c:v libx265 -x265-params log-level=error "$work/h10.hevc"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -pix_fmt yuv420p10le -c:v libvpx-vp9 -profile:v 2 -f ivf "$work/v10.ivf"
for x in h10.hevc:v4l2slh265dec v10.ivf:v4l2slvp9dec; do
    IFS=: read -r f el <<<"$x"
    ffmpeg -v error -i "$work/$f" -pix_fmt p010le -f framemd5 "$work/$f.ref"
    timeout 120 gst-launch-1.0 -q filesrc location="$work/$f" ! parsebin ! "$el" ! video/x-raw,format=P010_10LE ! \
        filesink location="$work/$f.yuv" >"$work/$f.gst" 2>&1 || { cat "$work/$f.gst"; echo "$f: gst-launch failed"; exit 1; }
    ffmpeg -v error -f rawvideo -pix_fmt p010le -s 128x96 -i "$work/$f.yuv" -f framemd5 "$work/$f.out"
    hashes "$work/$f.ref" >"$work/$f.ref.h"
    hashes "$work/$f.out" >"$work/$f.out.h"
    cmp -s "$work/$f.ref.h" "$work/$f.out.h" || { echo "$f: $el P010 differs from FFmpeg"; exit 1; }
    echo "$f: $el P010 $(wc -l <"$work/$f.ref.h")/$(wc -l <"$work/$f.ref.h") frames equal to FFmpeg"
done

# 100 clients killed at random moments within the time one whole decode takes.
ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 30 -pix_fmt yuv420p -c:v libx264 "$work/k.h264"
t0=$(date +%s%N)
"$bin" decode "$work/k.h264" --device "$dev" --framemd5 /dev/null 2>/dev/null
span=$((($(date +%s%N) - t0) / 1000000))
echo "one decode takes $span ms: kills at random in [0, $span) ms"
for i in $(seq 100); do
    "$bin" decode "$work/k.h264" --device "$dev" --framemd5 /dev/null 2>/dev/null &
    c=$!
    d=$((RANDOM * 32768 + RANDOM))
    d=$((d % span))
    sleep "$((d / 1000)).$(printf '%03d' $((d % 1000)))"
    kill -KILL "$c" 2>/dev/null || true
    wait "$c" 2>/dev/null || true
done
echo "100 clients killed at random moments"
no_d_state
# The daemon still serves: one more frame-exact decode.
"$bin" decode "$work/h264.h264" --device "$dev" --framemd5 "$work/after.md5" 2>"$work/after.err" ||
    { cat "$work/after.err"; echo "decode after the kills failed"; exit 1; }
[ "$(hashes "$work/after.md5")" = "$(hashes "$work/h264.h264.ref")" ] || { echo "decode after the kills differs"; exit 1; }
echo "decode after the kills: frame-exact"
stop_daemon
for _ in $(seq 50); do [ "$(refcount)" = 0 ] && break; sleep 0.1; done
[ "$(refcount)" = 0 ] || { echo "refcount $(refcount)"; exit 1; }
rmmod daedalus
dmesg | grep 'daemon detached' || true
klog=$(dmesg --level=emerg,alert,crit,err)
[ -z "$klog" ] || { echo "kernel log: $klog"; exit 1; }
echo "40-kernel-gst: OK ($pass codecs through GStreamer frame-exact${skipped:+, skipped:$skipped}, 100 kills)"
