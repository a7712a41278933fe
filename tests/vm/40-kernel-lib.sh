# shellcheck shell=bash
# Helpers sourced by tests/vm/40-kernel-*.sh (not executable: not a test of its own).
# The module must be built on the host first:
#   make -C kernel KDIR=$(vm/kdir) KBUILD_EXTRA_SYMBOLS=$(vm/kdir --symvers)
# and the binaries: cargo build --release -p daedalus -p daedalus-daemon
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
ko=$root/kernel/daedalus.ko
bridge=/dev/daedalus-bridge
[ -f "$ko" ] || { echo "missing $ko: make -C kernel KDIR=\$(vm/kdir) KBUILD_EXTRA_SYMBOLS=\$(vm/kdir --symvers)"; exit 1; }
work=$(mktemp -d)
daemon=
cleanup() {
    [ -z "$daemon" ] || kill -KILL "$daemon" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# kload [params...]: insmod kernel/daedalus.ko; sets $dev to its video node, $media to its media node.
kload() {
    insmod "$ko" "$@"
    dev=
    media=
    for _ in $(seq 50); do [ -e "$bridge" ] && break; sleep 0.1; done
    for n in /sys/class/video4linux/video*; do
        [ "$(cat "$n/name")" = daedalus ] && dev=/dev/${n##*/}
    done
    for m in /sys/bus/media/devices/media*; do
        [ "$(cat "$m/model" 2>/dev/null)" = daedalus ] && media=/dev/${m##*/}
    done
    [ -n "$dev" ] && [ -n "$media" ] && [ -c "$bridge" ] || { echo "daedalus nodes missing"; ls -l /dev; exit 1; }
}

# refcount: the module's use count (lsmod's third column).
refcount() { awk '$1 == "daedalus" { print $3 }' /proc/modules; }

# start_daemon: daedalus-daemon --bridge in the background ($daemon), waits until attached.
start_daemon() {
    local bin=$target/release/daedalus-daemon
    [ -x "$bin" ] || { echo "missing $bin: cargo build --release -p daedalus-daemon"; exit 1; }
    "$bin" --bridge "$bridge" >"$work/daemon.log" 2>&1 &
    daemon=$!
    for _ in $(seq 100); do
        dmesg | grep -q 'daedalus: daemon attached\|daedalus daedalus: daemon attached' && return 0
        sleep 0.1
    done
    cat "$work/daemon.log"
    echo "daemon did not attach"
    exit 1
}

stop_daemon() {
    kill -TERM "$daemon"
    wait "$daemon" || true
    daemon=
}

# no_d_state: fails when any task sleeps uninterruptibly (the #146 hang).
no_d_state() {
    local d
    d=$(ps -eo stat=,pid=,comm= | awk '$1 ~ /^D/' || true)
    [ -z "$d" ] || { echo "tasks in D state: $d"; exit 1; }
}

# Small streams of each codec (as tests/vm/daedalus-device-visl.sh makes them).
make_streams() {
    ffmpeg -v error -f lavfi -i testsrc2=size=176x144:rate=25 -frames:v 20 -pix_fmt yuv420p -c:v libx264 -profile:v main -bf 2 -g 12 "$work/h264.h264"
    ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -pix_fmt yuv420p -c:v libx265 -x265-params log-level=error "$work/hevc.hevc"
    ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -c:v libvpx -f ivf "$work/vp8.ivf"
    ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -c:v libvpx-vp9 -auto-alt-ref 1 -lag-in-frames 8 -f ivf "$work/vp9.ivf"
    # One-threaded, so the stream is the same every run (multi-threaded libaom output varies, and
    # some of its streams make trixie's libdav1d segfault under TCG; see ref_md5).
    ffmpeg -v error -f lavfi -i testsrc2=size=128x96:rate=25 -frames:v 8 -threads 1 -c:v libaom-av1 -cpu-used 8 -row-mt 0 -f ivf "$work/av1.ivf"
}

# ref_md5 IN OUT: FFmpeg's NV12 framemd5 of IN. Returns 2 when FFmpeg itself crashes (SIGSEGV):
# trixie's libdav1d segfaults on some AV1 streams under qemu TCG, in some boots, with or without
# any module loaded; such a codec is reported as SKIP rather than compared.
ref_md5() {
    local st=0
    ffmpeg -v error -i "$1" -pix_fmt nv12 -f framemd5 "$2" 2>"$2.err" || st=$?
    [ "$st" -eq 0 ] && return 0
    [ "$st" -eq 139 ] && return 2
    cat "$2.err"
    return 1
}

# refs_all: FFmpeg's references of make_streams' files, before the module is loaded
# ($work/FILE.ref, or $work/FILE.ref.crash when FFmpeg crashed).
refs_all() {
    local f st
    for f in h264.h264 hevc.hevc vp8.ivf vp9.ivf av1.ivf; do
        st=0
        ref_md5 "$work/$f" "$work/$f.ref" || st=$?
        [ "$st" -eq 2 ] && touch "$work/$f.ref.crash"
        [ "$st" -le 2 ] || { echo "$f: FFmpeg reference failed"; exit 1; }
    done
    return 0
}

# dav1d_crashed: true when a process segfaulted inside libdav1d (the TCG artefact of ref_md5). The
# daemon is then restarted, and the caller reports its AV1 check as SKIP.
dav1d_crashed() {
    dmesg | grep -aq 'segfault .* in libdav1d' || return 1
    echo "(libdav1d segfaulted in this guest: $(dmesg | grep -a 'segfault .* in libdav1d' | tail -1 | sed 's/^\[[^]]*\] //'))"
    dmesg -c >/dev/null
    if [ -n "$daemon" ] && ! kill -0 "$daemon" 2>/dev/null; then
        wait "$daemon" 2>/dev/null || true
        daemon=
        start_daemon
    fi
    return 0
}

# gone PID [SECONDS]: waits up to SECONDS (default 1) for PID to exit (zombie or reaped); prints
# the time it took in ms ($gone_ms), or the task's kernel stack when it did not.
gone() {
    local pid=$1 limit=${2:-1} t0 t1 st
    t0=$(date +%s%N)
    for _ in $(seq $((limit * 100))); do
        st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
        if [ "$st" = Z ] || [ "$st" = gone ]; then
            t1=$(date +%s%N)
            gone_ms=$(((t1 - t0) / 1000000))
            echo "client $pid gone after $gone_ms ms"
            return 0
        fi
        sleep 0.01
    done
    echo "client $pid still there after $limit s (state $st)"
    cat "/proc/$pid/stack" 2>/dev/null || true
    return 1
}

# hashes FRAMEMD5: the hash column of a framemd5 file, one line per frame.
hashes() { grep -v '^#' "$1" | awk -F, '{gsub(/ /, "", $6); print $6}'; }

# gst_matches EL LABEL YUV SIZE REF: GStreamer's I420 output YUV (SIZE WxH) against the framemd5
# REF, frame by frame as NV12 (FFmpeg's hashes); prints the verdict, fails on any difference.
gst_matches() {
    local el=$1 label=$2 yuv=$3 size=$4 ref=$5 n
    ffmpeg -v error -f rawvideo -pix_fmt yuv420p -s "$size" -i "$yuv" -pix_fmt nv12 -f framemd5 "$yuv.md5"
    hashes "$ref" >"$yuv.ref.h"
    hashes "$yuv.md5" >"$yuv.out.h"
    n=$(wc -l <"$yuv.ref.h")
    if cmp -s "$yuv.ref.h" "$yuv.out.h"; then
        echo "$label: $el $n/$n frames equal to FFmpeg"
        return 0
    fi
    echo "$label: $el differs from FFmpeg ($(wc -l <"$yuv.out.h") frames vs $n)"
    diff "$yuv.ref.h" "$yuv.out.h" | head -5
    return 1
}
