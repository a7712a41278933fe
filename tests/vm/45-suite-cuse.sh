#!/usr/bin/env bash
# Guest check: the shared V4L2 suite against the CUSE frontend (daedalus-cuse serve), for USERPTR
# and DMABUF buffers (CUSE cannot do MMAP), every client under `daedalus-cuse run` (media request
# fds): every decoder-core scenario (tests/scenarios/*.scn) with daedalus-test-daemon connecting to
# the server's socket, spawned, SIGSTOPped, SIGKILLed and commanded by the suite; `badinput`; and
# `decode` of a small H.264 stream with the real daedalus-daemon (framemd5 identical to FFmpeg's).
# Needs host builds: cargo build --release -p daedalus -p daedalus-daemon -p daedalus-cuse
# -p daedalus-test-daemon -p daedalus-v4l2-suite
# vm-timeout: 900
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
suite=$target/release/daedalus-v4l2-suite
cuse=$target/release/daedalus-cuse
for b in "$suite" "$cuse" "$target/release/daedalus" "$target/release/daedalus-daemon" "$target/release/daedalus-test-daemon"; do
    [ -x "$b" ] || { echo "missing $b"; exit 1; }
done
work=$(mktemp -d)
sock=$work/dv.sock
server= daemon=
trap 'for p in $daemon $server; do kill -KILL "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 10 -pix_fmt yuv420p -c:v libx264 -profile:v main -bf 2 -g 6 "$work/s.h264"
ffmpeg -v error -i "$work/s.h264" -pix_fmt nv12 -f framemd5 "$work/ref"
hashes() { grep -v '^#' "$1" | awk -F, '{gsub(/ /, "", $6); print $6}'; }

fails=0
for mem in userptr dmabuf; do
    rm -f "$sock"
    RUST_LOG=warn "$cuse" serve --name video9 --media-name media9 --socket "$sock" --memory $mem >"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 100); do [ -e /dev/media9-request ] && [ -S "$sock" ] && break; sleep 0.1; done
    [ -S "$sock" ] || { cat "$work/server.log"; echo "server did not come up"; exit 1; }
    s=("$cuse" run -- "$suite" --device /dev/video9 --media /dev/media9 --memory $mem)
    "${s[@]}" --daemon-socket "$sock" scenario "$root"/tests/scenarios/*.scn || fails=$((fails + 1))
    "${s[@]}" --requests-optional badinput || fails=$((fails + 1))
    "$target/release/daedalus-daemon" --connect "$sock" >"$work/daemon.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do grep -q 'daemon connected' "$work/server.log" && break; sleep 0.1; done
    "${s[@]}" decode "$work/s.h264" --framemd5 "$work/$mem.md5" || fails=$((fails + 1))
    kill -TERM "$daemon" 2>/dev/null || true; wait "$daemon" || true; daemon=
    if [ -f "$work/$mem.md5" ] && [ "$(hashes "$work/$mem.md5")" = "$(hashes "$work/ref")" ]; then
        echo "decode ($mem): framemd5 identical to FFmpeg's"
    else
        echo "decode ($mem): framemd5 differs from FFmpeg's"; fails=$((fails + 1))
        hashes "$work/ref" >"$work/ref.h"; hashes "$work/$mem.md5" >"$work/$mem.h" 2>/dev/null || true
        diff "$work/ref.h" "$work/$mem.h" | head -5 || true
        head -4 "$work/ref" "$work/$mem.md5" 2>/dev/null || true
    fi
    kill -TERM "$server"; wait "$server" || true; server=
    for _ in $(seq 100); do [ -e /dev/video9 ] || break; sleep 0.1; done
done
[ "$fails" -eq 0 ] || { echo "45-suite-cuse: $fails failed runs"; exit 1; }
echo "45-suite-cuse: OK"
