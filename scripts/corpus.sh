#!/usr/bin/env bash
# Generates the test corpus with Debian's encoders into .cache/corpus (or $1):
# each stream NAME.EXT with NAME.framemd5, FFmpeg's own software decode of it
# (`ffmpeg -i NAME.EXT -autoscale 0 -pix_fmt nv12|p010le -f framemd5`: every
# frame at its own size, also across resolution changes), and a manifest
# listing "NAME.EXT PIXFMT FRAMES". Idempotent: existing streams are kept
# unless CORPUS_FORCE=1. Encoders: libx264, libx265, libvpx (VP8/VP9),
# libaom, SVT-AV1 and rav1e through ffmpeg, plus the vpxenc and aomenc CLIs.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/.cache/corpus}
mkdir -p "$out"
cd "$out"
manifest=manifest.txt
: > "$manifest.new"
ff() { ffmpeg -nostdin -hide_banner -loglevel error -y "$@"; }
# A moving test picture: SIZE RATE FRAMES
src() { echo "-f lavfi -i testsrc2=size=$1:rate=25,format=yuv420p -frames:v $2"; }
src10() { echo "-f lavfi -i testsrc2=size=$1:rate=25,format=yuv420p10le -frames:v $2"; }

# make NAME EXT PIXFMT -- encoder command that writes $f
make_stream() {
    local name=$1 ext=$2 pix=$3; shift 4
    local f=$name.$ext
    if [ ! -s "$f" ] || [ -n "${CORPUS_FORCE:-}" ]; then
        if ! "$@" >/dev/null 2>"$name.log"; then
            echo "corpus: encoding $f failed (see $out/$name.log)" >&2
            return 1
        fi
        ff -i "$f" -autoscale 0 -pix_fmt "$pix" -f framemd5 "$name.framemd5"
    fi
    local n
    n=$(grep -vc '^#' "$name.framemd5")
    echo "$f $pix $n" >> "$manifest.new"
}

# Resolution change: OUT made of segments at SIZE... (8 frames each, each
# starting with a key frame), encoded by the ffmpeg output options after
# `--`. Annex-B segments are concatenated as they are, IVF ones through
# FFmpeg's concat demuxer (one IVF header, packets renumbered).
# reschange OUT SIZE... -- OPTIONS
reschange() {
    local out=$1 ext=${1##*.} sizes=() i=0; shift
    while [ "$1" != -- ]; do sizes+=("$1"); shift; done; shift
    : > "$out.list"
    for s in "${sizes[@]}"; do
        ff $(src "$s" 8) "$@" "$out.$i.$ext" || return 1
        echo "file '$out.$i.$ext'" >> "$out.list"; i=$((i + 1))
    done
    if [ "$ext" = ivf ]; then
        ff -f concat -safe 0 -i "$out.list" -c copy "$out"
    else
        cat $(sed "s/^file '\(.*\)'$/\1/" "$out.list") > "$out"
    fi
    rm -f "$out".*."$ext" "$out.list"
}

# ---- H.264 (Annex B) ------------------------------------------------------
f=h264-baseline-cavlc; make_stream $f h264 nv12 -- ff $(src 176x144 30) -c:v libx264 -profile:v baseline -x264-params keyint=15 $f.h264
f=h264-multislice; make_stream $f h264 nv12 -- ff $(src 176x144 24) -c:v libx264 -profile:v baseline -x264-params slices=4:keyint=12 $f.h264
f=h264-high-bpyramid-weighted; make_stream $f h264 nv12 -- ff $(src 320x240 30) -c:v libx264 -profile:v high -x264-params bframes=3:b-pyramid=normal:weightp=2:weightb=1:8x8dct=1:ref=4 $f.h264
f=h264-odd-size; make_stream $f h264 nv12 -- ff $(src 174x98 20) -c:v libx264 -profile:v main -x264-params bframes=2 $f.h264
f=h264-interlaced; make_stream $f h264 nv12 -- ff $(src 176x144 20) -c:v libx264 -x264-params tff=1 $f.h264
f=h264-reschange; make_stream $f h264 nv12 -- reschange $f.h264 128x96 176x144 96x64 -- -c:v libx264 -bf 2
f=h264-high10; make_stream $f h264 p010le -- ff $(src10 176x144 20) -c:v libx264 -profile:v high10 $f.h264

# ---- HEVC (Annex B) -------------------------------------------------------
f=hevc-main; make_stream $f hevc nv12 -- ff $(src 176x144 24) -c:v libx265 -x265-params log-level=error:bframes=3:keyint=12 $f.hevc
f=hevc-reschange; make_stream $f hevc nv12 -- reschange $f.hevc 128x96 176x144 -- -c:v libx265 -x265-params log-level=error
f=hevc-main10; make_stream $f hevc p010le -- ff $(src10 176x144 16) -c:v libx265 -x265-params log-level=error $f.hevc

# ---- VP8 / VP9 (IVF) ------------------------------------------------------
f=vp8-basic; make_stream $f ivf nv12 -- ff $(src 176x144 30) -c:v libvpx -g 15 -b:v 300k $f.ivf
f=vp8-odd-size; make_stream $f ivf nv12 -- ff $(src 66x50 15) -c:v libvpx -b:v 100k $f.ivf
f=vp9-altref; make_stream $f ivf nv12 -- ff $(src 176x144 30) -c:v libvpx-vp9 -b:v 300k -auto-alt-ref 1 -lag-in-frames 16 -g 30 $f.ivf
f=vp8-reschange; make_stream $f ivf nv12 -- reschange $f.ivf 128x96 176x144 -- -c:v libvpx -b:v 200k
f=vp9-reschange; make_stream $f ivf nv12 -- reschange $f.ivf 128x96 176x144 96x64 -- -c:v libvpx-vp9 -b:v 200k
f=vp9-profile2-10bit; make_stream $f ivf p010le -- ff $(src10 176x144 16) -c:v libvpx-vp9 -profile:v 2 -b:v 300k $f.ivf

# ---- AV1 (IVF) ------------------------------------------------------------
f=av1-aom-hidden; make_stream $f ivf nv12 -- ff $(src 176x144 24) -c:v libaom-av1 -cpu-used 8 -lag-in-frames 16 -b:v 200k $f.ivf
f=av1-aom-tiles; make_stream $f ivf nv12 -- ff $(src 352x288 12) -c:v libaom-av1 -cpu-used 8 -tiles 2x2 -row-mt 1 -b:v 300k $f.ivf
f=av1-aom-odd-size; make_stream $f ivf nv12 -- ff $(src 66x50 12) -c:v libaom-av1 -cpu-used 8 -b:v 50k $f.ivf
f=av1-aom-film-grain; make_stream $f ivf nv12 -- ff $(src 176x144 12) -c:v libaom-av1 -cpu-used 8 -denoise-noise-level 25 -b:v 200k $f.ivf
# Frame sizes changing without key frames (random resize: references are
# scaled) and super-resolution (frames coded narrower, upscaled): aomenc.
y4m=$out/src-176x144.y4m
[ -s "$y4m" ] || ff $(src 176x144 16) "$y4m"
f=av1-aom-resize; make_stream $f ivf nv12 -- aomenc --cpu-used=8 --limit=16 --resize-mode=2 --ivf -o $f.ivf "$y4m"
f=av1-aom-superres; make_stream $f ivf nv12 -- aomenc --cpu-used=8 --limit=16 --superres-mode=3 --ivf -o $f.ivf "$y4m"
f=av1-reschange; make_stream $f ivf nv12 -- reschange $f.ivf 128x96 176x144 -- -c:v libaom-av1 -cpu-used 8 -b:v 100k
f=av1-svt; make_stream $f ivf nv12 -- ff $(src 176x144 16) -c:v libsvtav1 -preset 12 $f.ivf
f=av1-svt-long-gop; make_stream $f ivf nv12 -- ff $(src 176x144 80) -c:v libsvtav1 -preset 12 -g 64 $f.ivf
f=av1-rav1e; make_stream $f ivf nv12 -- ff $(src 176x144 12) -c:v librav1e -speed 10 $f.ivf

# ---- Containers (libavformat demuxing) ------------------------------------
f=h264-mp4; make_stream $f mp4 nv12 -- ff $(src 176x144 24) -c:v libx264 -bf 2 $f.mp4
f=hevc-mkv; make_stream $f mkv nv12 -- ff $(src 176x144 16) -c:v libx265 -x265-params log-level=error $f.mkv
f=vp9-webm; make_stream $f webm nv12 -- ff $(src 176x144 20) -c:v libvpx-vp9 -b:v 200k $f.webm
f=vp8-webm; make_stream $f webm nv12 -- ff $(src 176x144 16) -c:v libvpx -b:v 200k $f.webm
f=av1-mp4; make_stream $f mp4 nv12 -- ff $(src 176x144 16) -c:v libaom-av1 -cpu-used 8 -b:v 100k $f.mp4

mv "$manifest.new" "$manifest"
echo "corpus: $(wc -l < "$manifest") streams in $out"
