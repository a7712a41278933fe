#!/usr/bin/env bash
# Guest check of the CUSE frontend: daedalus-cuse serves /dev/video9 and /dev/media9 (embedded
# daemon); v4l2-compliance runs against the video node under the seccomp launcher (which hands out
# media request fds) and its summary line is printed.
# vm-timeout: 600
set -uo pipefail
T=${CARGO_TARGET_DIR:-target}
P=${CUSE_PROFILE:-release}
B=$T/$P/daedalus-cuse
[ -x "$B" ] || { echo "build $B first (cargo build --release -p daedalus-cuse)"; exit 1; }
RUST_LOG=${RUST_LOG:-warn} "$B" serve --name video9 --media-name media9 --embedded-daemon &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do [ -e /dev/media9-request ] && break; sleep 0.1; done
[ -e /dev/video9 ] || { echo "no /dev/video9"; exit 1; }
ls -l /dev/video9 /dev/media9 /dev/media9-request
v4l2-ctl -d /dev/video9 --info
out=$(timeout 400 "$B" run -- v4l2-compliance ${COMPLIANCE_ARGS:--m /dev/media9} 2>&1)
status=$?
printf '%s\n' "$out" | grep -E "fail|FAIL|warn|Total for" | head -60
printf '%s\n' "$out" | grep "Total for" || { printf '%s\n' "$out" | tail -40; exit 1; }
kill -0 $server || { echo "server died"; exit 1; }
exit $status
