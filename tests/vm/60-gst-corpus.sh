#!/usr/bin/env bash
# Guest check (issue #6): GStreamer's v4l2codecs decode corpus streams (scripts/corpus.sh, made
# on the host) through kernel/daedalus.ko + `daedalus-daemon --bridge`; every picture's MD5
# (GStreamer's I420 output converted to NV12) equals the corpus' FFmpeg framemd5. One or more
# fixed-size 8-bit streams per codec. Interlaced H.264, resolution changes and odd sizes are left
# to the v4l2r corpus suites (60-corpus-*): the raw-video comparison needs one size, and
# GStreamer pads I420 rows of odd widths to 4 bytes.
# Needs host builds: `just kmod`, cargo build --release -p daedalus-daemon; `just corpus`.
# vm-timeout: 1200
set -euo pipefail
# shellcheck source=tests/vm/40-kernel-lib.sh
. "$(dirname "$0")/40-kernel-lib.sh"
corpus=$root/.cache/corpus
[ -f "$corpus/manifest.txt" ] || { echo "no corpus: run just corpus"; exit 1; }
dmesg -c >/dev/null
kload
start_daemon
pass=0
for s in h264-baseline-cavlc.h264:v4l2slh264dec h264-multislice.h264:v4l2slh264dec \
    h264-high-bpyramid-weighted.h264:v4l2slh264dec \
    hevc-main.hevc:v4l2slh265dec vp8-basic.ivf:v4l2slvp8dec \
    vp9-altref.ivf:v4l2slvp9dec av1-aom-hidden.ivf:v4l2slav1dec av1-svt.ivf:v4l2slav1dec \
    av1-rav1e.ivf:v4l2slav1dec; do
    IFS=: read -r f el <<<"$s"
    name=${f%.*}
    size=$(sed -n 's/^#dimensions 0: //p' "$corpus/$name.framemd5")
    timeout 300 gst-launch-1.0 -q filesrc location="$corpus/$f" ! parsebin ! "$el" ! videoconvert ! \
        video/x-raw,format=I420 ! filesink location="$work/$name.yuv" >"$work/$name.gst" 2>&1 ||
        { cat "$work/$name.gst"; tail -5 "$work/daemon.log"; echo "$f: gst-launch failed"; exit 1; }
    gst_matches "$el" "$name" "$work/$name.yuv" "$size" "$corpus/$name.framemd5" || exit 1
    pass=$((pass + 1))
done
stop_daemon
no_d_state
rmmod daedalus
echo "60-gst-corpus: OK ($pass corpus streams frame-exact through GStreamer)"
