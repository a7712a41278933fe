#!/usr/bin/env bash
# Guest check (issue #6, c): v4l2-compliance -s on daedalus.ko's video node with
# `daedalus-daemon --bridge` attached (streaming needs a daemon), and on the media node.
# (No -e: its DMABUF test needs a non-M2M capture node as exporter, e.g. vivid, which the guest
# lacks; 40-kernel-decode.sh covers DMABUF import with --memory dmabuf.)
# Prints the summary lines; fails on any failure (warnings are printed).
# vm-timeout: 600
set -euo pipefail
# shellcheck source=tests/vm/40-kernel-lib.sh
. "$(dirname "$0")/40-kernel-lib.sh"

dmesg -c >/dev/null
kload
start_daemon
status=0
v4l2-compliance -d "$dev" -s >"$work/video.txt" 2>&1 || status=$?
grep -E 'fail:|warn:|FAIL' "$work/video.txt" | sort | uniq -c | head -40 || true
summary=$(grep '^Total for' "$work/video.txt" || true)
echo "video: $summary"
[ -n "$summary" ] || { tail -40 "$work/video.txt"; echo "no summary"; exit 1; }
v4l2-compliance -m "$media" >"$work/media.txt" 2>&1 || status=$?
grep -E 'fail:|warn:' "$work/media.txt" || true
echo "media: $(grep '^Grand Total\|^Total for' "$work/media.txt" | tail -1)"
case $summary in *", Failed: 0,"*) ;; *) status=1 ;; esac
stop_daemon
rmmod daedalus
[ "$status" -eq 0 ] || { echo "v4l2-compliance reported failures"; exit 1; }
echo "40-kernel-compliance: OK"
