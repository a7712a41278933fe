#!/usr/bin/env bash
# Guest check: the shared V4L2 suite (tests/v4l2-suite, daedalus-v4l2-suite) against visl, the
# kernel's own stateless decoder. visl's queues accept MMAP and DMABUF (REQBUFS with USERPTR is
# EINVAL: checked here, so a change shows). For MMAP and DMABUF: `decode` of a tiny H.264 (B-frames)
# and VP9 stream (one framemd5 line per frame FFmpeg decodes, identical between the two memory
# types), `badinput` (every client-mistake check with the kernel's errno; visl's OUTPUT queue does
# not require requests: --requests-optional), decoder-core's V4L2-free scenario steps through the
# suite's runner (tests/v4l2-suite/scenarios-visl: visl decodes itself, no daemon), and device.rs's
# real-device unit test over every codec with DAEDALUS_DEVICE_MEMORY=dmabuf; DMABUF decode from
# udmabuf too (DAEDALUS_DMABUF_SOURCE=udmabuf), frame-identical to MMAP. The daemon scenarios
# (tests/scenarios/*.scn) need the kernel module or the CUSE frontend: see tests/v4l2-suite/README.md.
# Needs host builds: cargo build --release -p daedalus -p daedalus-test-daemon -p daedalus-v4l2-suite
# and cargo test --release -p daedalus --bin daedalus --no-run
# vm-modprobe: visl
# vm-timeout: 600
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
suite=$target/release/daedalus-v4l2-suite
bin=$target/release/daedalus
for b in "$suite" "$bin" "$target/release/daedalus-test-daemon"; do
    [ -x "$b" ] || { echo "missing $b: cargo build --release -p daedalus -p daedalus-test-daemon -p daedalus-v4l2-suite"; exit 1; }
done

dev=
for n in /sys/class/video4linux/video*; do
    [ "$(cat "$n/name")" = visl ] && dev=/dev/${n##*/} && sysdir=$n
done
[ -n "$dev" ] || { echo "no visl video node"; exit 1; }
media=
for m in "$sysdir"/device/media*; do [ -e "$m" ] && media=/dev/${m##*/}; done
[ -n "$media" ] || { echo "no media node next to $dev"; exit 1; }
echo "visl: $dev $media"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 10 -pix_fmt yuv420p -c:v libx264 -profile:v main -bf 2 -g 6 "$work/bframes.h264"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 6 -c:v libvpx-vp9 -f ivf "$work/vp9.ivf"

for s in bframes.h264 vp9.ivf; do ffmpeg -v error -i "$work/$s" -f framemd5 "$work/$s.ref"; done
dmesg -c >/dev/null
fails=0
# USERPTR: visl's vb2 queues offer MMAP and DMABUF only.
if "$bin" decode "$work/vp9.ivf" --device "$dev" --memory userptr --framemd5 "$work/u.md5" 2>"$work/u.err"; then
    echo "visl accepted USERPTR: update this script and the README"; fails=$((fails + 1))
else
    grep -q 'REQBUFS(OUTPUT, userptr)' "$work/u.err" || { cat "$work/u.err"; fails=$((fails + 1)); }
    echo "visl: USERPTR refused ($(tr -d '\n' <"$work/u.err"))"
fi

for mem in mmap dmabuf; do
    for s in bframes.h264 vp9.ivf; do
        want=$(grep -vc '^#' "$work/$s.ref")
        out=$("$suite" --device "$dev" --media "$media" --memory $mem decode "$work/$s" --framemd5 "$work/$s.$mem") || fails=$((fails + 1))
        echo "$out"
        got=$(grep -vc '^#' "$work/$s.$mem" || true)
        [ "$got" -eq "$want" ] || { echo "$s ($mem): $got frames, FFmpeg decodes $want"; fails=$((fails + 1)); }
    done
    "$suite" --device "$dev" --media "$media" --memory $mem --requests-optional badinput || fails=$((fails + 1))
    "$suite" --device "$dev" --media "$media" --memory $mem scenario "$root"/tests/v4l2-suite/scenarios-visl/*.scn || fails=$((fails + 1))
done
# DMABUF from udmabuf (memfd) instead of the system dma-heap.
DAEDALUS_DMABUF_SOURCE=udmabuf "$suite" --device "$dev" --media "$media" --memory dmabuf decode "$work/bframes.h264" --framemd5 "$work/bframes.h264.udmabuf" ||
    fails=$((fails + 1))
for s in bframes.h264 vp9.ivf; do
    cmp -s "$work/$s.mmap" "$work/$s.dmabuf" || { echo "$s: framemd5 differs between MMAP and DMABUF"; fails=$((fails + 1)); }
done
cmp -s "$work/bframes.h264.mmap" "$work/bframes.h264.udmabuf" || { echo "framemd5 differs between MMAP and udmabuf DMABUF"; fails=$((fails + 1)); }

# Every codec through V4l2Device with DMABUF buffers (device.rs's ignored unit test).
unit=
for f in $(ls -t "$target"/release/deps/daedalus-*); do
    [ -x "$f" ] && [ "${f%.d}" = "$f" ] || continue
    list=$("$f" --list 2>/dev/null || true)
    if grep -q '^device::tests::decodes_streams_on_a_real_device:' <<<"$list"; then unit=$f; break; fi
done
if [ -n "$unit" ]; then
    ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 4 -c:v libvpx -f ivf "$work/vp8.ivf"
    ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 4 -c:v libaom-av1 -cpu-used 8 -f ivf "$work/av1.ivf"
    ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 4 -pix_fmt yuv420p -c:v libx265 -x265-params log-level=error "$work/hevc.hevc"
    DAEDALUS_DEVICE_MEMORY=dmabuf DAEDALUS_DEVICE=$dev \
        DAEDALUS_DEVICE_STREAMS="$work/bframes.h264:slices $work/hevc.hevc $work/vp8.ivf $work/vp9.ivf $work/av1.ivf" \
        "$unit" --ignored --exact device::tests::decodes_streams_on_a_real_device --nocapture || fails=$((fails + 1))
else
    echo "no unit test binary: cargo test --release -p daedalus --bin daedalus --no-run"; fails=$((fails + 1))
fi
# Media-related kernel complaints only (a loaded TCG host makes timers and the clocksource
# watchdog complain: not a driver problem; vm/run.sh still fails any oops or WARN). badinput's
# request-two-output-buffers makes visl log its refusal at err level.
klog=$(dmesg --level=emerg,alert,crit,err,warn | grep -iE 'visl|v4l2|vb2|videobuf|media|dma.?buf' |
    grep -v -e 'More than one buffer was provided with the request' || true)
[ -z "$klog" ] || { echo "kernel log: $klog"; fails=$((fails + 1)); }
[ "$fails" -eq 0 ] || { echo "45-suite-visl: $fails failures"; exit 1; }
echo "45-suite-visl: OK"
