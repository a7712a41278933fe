#!/usr/bin/env bash
# Guest half of `just vm-selftest` (run by vm/selftest.sh through vm/run.sh with visl and
# vicodec modprobe'd): proves the guest is fit for the project's tests.
#   1. kernel pieces: the media stack + OOT v4l2-mem2mem loaded, /dev/cuse, udmabuf, dma-heap
#   2. v4l2-compliance -s against visl (every test must pass); VM_SELFTEST_FULL=1 adds vicodec's
#      encoder (must pass) and stateless decoder (reported only: vicodec itself fails 8 tests)
#   3. GStreamer v4l2codecs decoding through visl (VP8 and AV1): the decoder must deliver every frame
#   4. FFmpeg reference hashes (framemd5) are produced
# Lines starting with "SELFTEST:" are the results vm/selftest.sh repeats in its summary.
set -euo pipefail
fails=0
ok() { echo "SELFTEST: ok   $*"; }
bad() { echo "SELFTEST: FAIL $*"; fails=$((fails + 1)); }

echo "guest: $(uname -r); $(v4l2-compliance --version 2>&1 | head -1); $(gst-launch-1.0 --version | sed -n 2p); $(ffmpeg -version | head -1 | cut -d' ' -f1-3)"

# ---------------------------------------------------------------- 1. kernel pieces
for m in videodev mc videobuf2_common videobuf2_v4l2 videobuf2_memops videobuf2_vmalloc \
    videobuf2_dma_contig videobuf2_dma_sg v4l2_mem2mem cuse visl vicodec; do
    grep -q "^$m " /proc/modules || bad "module $m not loaded"
done
for n in /dev/cuse /dev/udmabuf /dev/dma_heap/system; do
    [ -c "$n" ] || bad "no $n"
done
[ $fails = 0 ] && ok "modules (media stack, OOT v4l2-mem2mem/visl/vicodec, cuse) and /dev/cuse /dev/udmabuf /dev/dma_heap/system"

# video node whose sysfs name is $1
node() {
    local d
    for d in /sys/class/video4linux/video*; do
        [ "$(cat "$d/name")" = "$1" ] && { echo "/dev/${d##*/}"; return 0; }
    done
    return 1
}

# ---------------------------------------------------------------- 2. v4l2-compliance
compliance() { # label node must_pass
    local log summary t0 t1
    log=$(mktemp)
    t0=$(date +%s)
    v4l2-compliance -d "$2" -s >"$log" 2>&1 || true
    t1=$(date +%s)
    summary=$(grep -E '^Total for ' "$log" | tail -1)
    echo "COMPLIANCE: $1 ($2, $((t1 - t0))s): ${summary:-no summary line}$([ "$3" = 1 ] || echo ' [informational]')"
    if [ "$3" = 1 ]; then
        if [[ $summary =~ Failed:\ 0, ]]; then
            ok "v4l2-compliance -s $1"
        else
            grep -E 'fail:' "$log" | head -20
            bad "v4l2-compliance -s $1"
        fi
    fi
    rm -f "$log"
}
visl=$(node visl) || bad "no visl video node"
[ -z "${visl:-}" ] || compliance visl "$visl" 1
if [ -n "${VM_SELFTEST_FULL:-}" ]; then
    enc=$(node stateful-encoder) && compliance vicodec-encoder "$enc" 1
    sdec=$(node stateless-decoder) && compliance vicodec-stateless-decoder "$sdec" 0
fi

# ---------------------------------------------------------------- 3. GStreamer through visl
# checksumsink prints one line per buffer the v4l2 decoder produced
gst_decode() { # label frames encoder-chain decoder
    local out n
    out=$(mktemp)
    # shellcheck disable=SC2086
    if timeout 300 gst-launch-1.0 -q videotestsrc num-buffers="$2" \
        ! video/x-raw,width=320,height=240,framerate=30/1 ! $3 ! "$4" ! checksumsink >"$out" 2>&1; then
        n=$(grep -cE '^[0-9]+:[0-9]+:[0-9.]+ [0-9a-f]{40}$' "$out" || true)
        if [ "$n" = "$2" ]; then
            ok "GStreamer $1: videotestsrc ! ... ! $4 (visl) ! checksumsink: $n/$2 frames"
        else
            cat "$out"
            bad "GStreamer $1: $4 delivered $n of $2 frames"
        fi
    else
        cat "$out"
        bad "GStreamer $1 pipeline failed"
    fi
    rm -f "$out"
}
gst-inspect-1.0 v4l2codecs | grep -E '^  v4l2sl' | sed 's/^/guest: /'
gst_decode VP8 10 vp8enc v4l2slvp8dec
gst_decode AV1 5 "av1enc cpu-used=8 ! av1parse" v4l2slav1dec

# ---------------------------------------------------------------- 4. FFmpeg
hashes=$(ffmpeg -hide_banner -loglevel error -f lavfi -i testsrc=size=64x64:rate=10 -frames:v 3 -f framemd5 - |
    grep -cE '^0, +[0-9]+, .*[0-9a-f]{32}$' || true)
if [ "$hashes" = 3 ]; then ok "FFmpeg framemd5 reference hashes (3 frames)"; else bad "FFmpeg framemd5 gave $hashes hashes"; fi
missing=
decoders=$(ffmpeg -hide_banner -decoders 2>/dev/null)
for c in h264 hevc vp8 vp9 libdav1d; do
    grep -qE "^ V[^ ]* $c " <<<"$decoders" || missing+=" $c"
done
if [ -z "$missing" ]; then ok "FFmpeg decoders h264 hevc vp8 vp9 libdav1d"; else bad "FFmpeg lacks decoders:$missing"; fi

echo "SELFTEST: $fails failure(s)"
[ $fails = 0 ]
