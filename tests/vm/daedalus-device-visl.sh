#!/usr/bin/env bash
# Guest check: `daedalus decode --device` drives a real V4L2 stateless decoder (visl: the real
# request/stateless uAPI, test-pattern pictures) through whole streams: H.264 main profile with
# B-frames (reordering, two IDRs), an odd-sized H.264 baseline stream with 3 slices per picture
# (frame-based jobs, cropping), HEVC, VP8, VP9, AV1. For each: exit 0 (no CAPTURE buffer came
# back with V4L2_BUF_FLAG_ERROR: daedalus fails on those), one framemd5 line per frame FFmpeg
# decodes from the same file, FFmpeg's dimensions and frame sizes, media requests reused (no
# more allocated than OUTPUT buffers), no kernel error or warning line. Then device.rs's ignored
# unit test pushes every job of each codec (and H.264 one slice per job, with held CAPTURE
# buffers) through V4l2Device, and the v4l2r example client decodes the first stream with one
# "ok" line per picture. Kernel oopses/WARNs also fail the run (vm/run.sh).
# Needs host builds: cargo build --release -p daedalus --bins --example v4l2_decode and
# cargo test --release -p daedalus --bin daedalus --no-run
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
lavfi() { ffmpeg -v error -f lavfi -i "testsrc2=size=$1:rate=25" -frames:v "$2" -pix_fmt yuv420p -c:v libx264 "${@:4}" "$work/$3.h264"; }
lavfi 176x144 20 bframes -profile:v main -bf 2 -g 12
lavfi 100x58 12 slices -profile:v baseline -x264-params slices=3
# The other codecs, 8 frames each.
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -c:v libvpx -f ivf "$work/vp8.ivf"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -c:v libvpx-vp9 -auto-alt-ref 1 -lag-in-frames 8 -f ivf "$work/vp9.ivf"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -c:v libaom-av1 -cpu-used 8 -f ivf "$work/av1.ivf"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -pix_fmt yuv420p -c:v libx265 -x265-params log-level=error "$work/hevc.hevc"

body() { grep -v '^#' "$1"; }
for in in "$work"/bframes.h264 "$work"/slices.h264 "$work"/hevc.hevc "$work"/vp8.ivf "$work"/vp9.ivf "$work"/av1.ivf; do
    s=${in##*/}
    ffmpeg -v error -i "$in" -f framemd5 "$work/$s.ref"
    want=$(body "$work/$s.ref" | wc -l)
    [ "$want" -gt 0 ] || { echo "$s: FFmpeg decodes nothing"; exit 1; }
    dmesg -c >/dev/null
    status=0
    RUST_LOG=daedalus::device=info "$bin" decode "$in" --device "$dev" --framemd5 "$work/$s.out" 2>"$work/$s.err" || status=$?
    cat "$work/$s.err"
    [ "$status" -eq 0 ] || { echo "$s: daedalus decode --device exited $status"; exit 1; }
    got=$(body "$work/$s.out" | wc -l)
    echo "$s: daedalus --device $dev wrote $got framemd5 lines, FFmpeg decodes $want frames"
    [ "$got" -eq "$want" ] || { echo "$s: frame count mismatch"; exit 1; }
    # Same picture geometry as FFmpeg: the dimensions header and the size column.
    # (files, not process substitution: the guest has no /dev/fd)
    for f in ref out; do
        { grep '^#dimensions' "$work/$s.$f"; body "$work/$s.$f" | awk -F, '{print $5}'; } >"$work/$s.$f.geom"
    done
    cmp -s "$work/$s.ref.geom" "$work/$s.out.geom" ||
        { echo "$s: dimensions or frame sizes differ from FFmpeg's"; diff "$work/$s.ref.geom" "$work/$s.out.geom" | head; exit 1; }
    if grep -qiE 'error|failed|WARN' "$work/$s.err"; then echo "$s: errors reported"; exit 1; fi
    reqs=$(sed -n 's/.* \([0-9]*\) jobs, \([0-9]*\) media requests allocated.*/\1 \2/p' "$work/$s.err")
    read -r jobs nreq <<<"$reqs"
    # One job per displayed frame for H.264/HEVC; frame codecs also decode hidden frames and
    # show some twice without a job.
    case $s in *.ivf) minjobs=1 ;; *) minjobs=$want ;; esac
    [ "${jobs:-0}" -ge "$minjobs" ] && [ "${nreq:-99}" -le 4 ] ||
        { echo "$s: jobs/requests '$reqs' (want >= $minjobs jobs, <= 4 requests)"; exit 1; }
    case $s in *.ivf) ;; *) [ "$jobs" -eq "$want" ] || { echo "$s: $jobs jobs for $want frames"; exit 1; } ;; esac
    klog=$(dmesg --level=emerg,alert,crit,err,warn | grep -iE 'visl|v4l2|vb2|videobuf|media|dma.?buf' || true)
    [ -z "$klog" ] || { echo "$s: kernel log: $klog"; exit 1; }
done

# Every codec daedalus parses, through V4l2Device directly (device.rs's ignored unit test):
# visl validates each control payload with the kernel's own checks (std_validate_compound),
# so a layout or value the kernel refuses fails here. bframes.h264 again with one slice per job
# (V4L2_BUF_FLAG_M2M_HOLD_CAPTURE_BUF, then DECODER_CMD flush).
# deps/ also holds the CLI itself under a daedalus-HASH name: take the newest that lists the test.
unit=
for f in $(ls -t "$target"/release/deps/daedalus-*); do
    [ -x "$f" ] && [ "${f%.d}" = "$f" ] || continue
    list=$("$f" --list 2>/dev/null || true) # (not piped into grep -q: SIGPIPE under pipefail)
    if grep -q '^device::tests::decodes_streams_on_a_real_device:' <<<"$list"; then unit=$f; break; fi
done
[ -n "$unit" ] || { echo "no unit test binary: cargo test --release -p daedalus --bin daedalus --no-run"; exit 1; }
dmesg -c >/dev/null
DAEDALUS_DEVICE=$dev DAEDALUS_DEVICE_STREAMS="$work/bframes.h264:slices $work/slices.h264:slices $work/hevc.hevc $work/vp8.ivf $work/vp9.ivf $work/av1.ivf" \
    "$unit" --ignored --exact device::tests::decodes_streams_on_a_real_device --nocapture
klog=$(dmesg --level=emerg,alert,crit,err,warn | grep -iE 'visl|v4l2|vb2|videobuf|media|dma.?buf' || true)
[ -z "$klog" ] || { echo "codecs: kernel log: $klog"; exit 1; }

"$example" "$dev" "$work/bframes.h264" >"$work/ex.out" 2>&1 || { cat "$work/ex.out"; echo "example failed"; exit 1; }
cat "$work/ex.out"
want=$(body "$work/bframes.h264.ref" | wc -l)
ok=$(grep -c '^frame .* ok$' "$work/ex.out" || true)
[ "$ok" -eq "$want" ] || { echo "example: $ok ok frames, expected $want"; exit 1; }
echo "daedalus-device-visl: OK"
