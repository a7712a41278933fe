#!/usr/bin/env bash
# Guest check of the CUSE frontend (issue #5, b): daedalus-cuse serves /dev/video9 + /dev/media9,
# daedalus-daemon --connect attaches over the unix socket, and `daedalus decode --device
# /dev/video9 --memory userptr` (under `daedalus-cuse run`, which provides media request fds)
# decodes H.264 (B-frames), HEVC, VP8, VP9 and AV1 to exactly FFmpeg's pictures (framemd5 hash
# column); with USERPTR buffers (copied through memfds), then again with DMABUF buffers (the
# client's dma-bufs go to the daemon, zero copy). The per-job deadline is raised to 20 s: an
# emulated guest on a loaded host can take longer than the default 2 s for one picture.
# Needs: cargo build --release -p daedalus-cuse -p daedalus-daemon -p daedalus
# vm-timeout: 900
set -euo pipefail
# shellcheck source=tests/vm/50-cuse-lib.sh
. "$(dirname "$0")/50-cuse-lib.sh"
ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 12 -pix_fmt yuv420p -c:v libx264 -profile:v main -bf 2 -g 12 "$work/h264.h264"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 6 -pix_fmt yuv420p -c:v libx265 -x265-params log-level=error "$work/hevc.hevc"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 6 -c:v libvpx -f ivf "$work/vp8.ivf"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 6 -c:v libvpx-vp9 -auto-alt-ref 1 -lag-in-frames 6 -f ivf "$work/vp9.ivf"
ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 6 -c:v libaom-av1 -cpu-used 8 -f ivf "$work/av1.ivf"
pass=0
fail=0
for s in ${CUSE_STREAMS:-h264.h264 hevc.hevc vp8.ivf vp9.ivf av1.ivf}; do
    ffmpeg -v error -i "$work/$s" -pix_fmt nv12 -f framemd5 "$work/$s.ref"
done
for mem in ${CUSE_MEMORIES:-userptr dmabuf}; do
    start_server --job-timeout-ms 20000
    start_daemon
    for s in ${CUSE_STREAMS:-h264.h264 hevc.hevc vp8.ivf vp9.ivf av1.ivf}; do
        in=$work/$s
        rm -f "$work/$s.out"
        status=0
        t0=$(date +%s%N)
        decode "$in" "$work/$s.out" 2>"$work/$s.err" || status=$?
        t1=$(date +%s%N)
        hashes "$work/$s.ref" >"$work/$s.ref.h"
        [ -f "$work/$s.out" ] && hashes "$work/$s.out" >"$work/$s.out.h" || : >"$work/$s.out.h"
        want=$(wc -l <"$work/$s.ref.h")
        same=$(paste -d' ' "$work/$s.ref.h" "$work/$s.out.h" | awk '$1 == $2' | wc -l)
        printf '%s %s: exit %d, %d/%d frames equal to FFmpeg (%d ms)\n' "$mem" "$s" "$status" "$same" "$want" $(((t1 - t0) / 1000000))
        if [ "$status" -eq 0 ] && [ "$want" -gt 0 ] && cmp -s "$work/$s.ref.h" "$work/$s.out.h"; then
            pass=$((pass + 1))
        else
            fail=$((fail + 1))
            tail -5 "$work/$s.err"
            grep -E "WARN|ERROR" "$work/server.log" | tail -5 || true
        fi
    done
    kill -0 "$server" || { tail "$work/server.log"; echo "server died"; exit 1; }
    stop_all
done
echo "50-cuse-decode: $pass decodes frame-exact, $fail failed"
[ "$fail" -eq 0 ]
