#!/usr/bin/env bash
# Guest check of the CUSE frontend: daedalus-cuse serves /dev/video9 and /dev/media9 (embedded
# daemon); v4l2-compliance -m /dev/media9 (the media device, then the video interface it lists)
# runs under the seccomp launcher (which hands out media request fds); the summary lines are
# printed. v4l2-compliance requires MMAP of every streaming device, which CUSE cannot offer (its
# file operations have no mmap): the two failures that follow from that alone are expected
# (REQBUFS: "!mmap_valid && userptr_valid"; blocking wait: its REQBUFS of MMAP buffers), any other
# failure or warning fails the test.
# Needs: cargo build --release -p daedalus-cuse
# vm-timeout: 600
set -uo pipefail
T=${CARGO_TARGET_DIR:-target}
B=$T/${CUSE_PROFILE:-release}/daedalus-cuse
[ -x "$B" ] || { echo "build $B first (cargo build --release -p daedalus-cuse)"; exit 1; }
RUST_LOG=${RUST_LOG:-warn} "$B" serve --name video9 --media-name media9 --embedded-daemon &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do [ -e /dev/media9-request ] && break; sleep 0.1; done
[ -e /dev/video9 ] || { echo "no /dev/video9"; exit 1; }
v4l2-ctl -d /dev/video9 --info
out=$(timeout 400 "$B" run -- v4l2-compliance ${COMPLIANCE_ARGS:--m /dev/media9} 2>&1)
status=$?
printf '%s\n' "$out" | grep -E "^\s*test .*FAIL|fail:|warn:"
printf '%s\n' "$out" | grep -E "Total" || { printf '%s\n' "$out" | tail -40; exit 1; }
kill -0 $server || { echo "server died"; exit 1; }
# Failures other than the expected MMAP ones?
unexpected=$(printf '%s\n' "$out" | grep -E "fail:|warn:" |
    grep -vE '!mmap_valid && userptr_valid|q\.reqbufs\(node, 2\)|testBlockingDQBuf\(node, q\)' || true)
[ -z "$unexpected" ] || { echo "unexpected: $unexpected"; exit 1; }
failed=$(printf '%s\n' "$out" | grep -E "^\s*test .*: FAIL" | grep -vcE "REQBUFS/CREATE_BUFS/QUERYBUF|blocking wait" || true)
[ "$failed" -eq 0 ] || { echo "$failed unexpected failed tests"; exit 1; }
printf '%s\n' "$out" | grep -q "device /dev/media9: 8, Succeeded: 8, Failed: 0, Warnings: 0" ||
    { echo "media device tests failed"; exit 1; }
[ "$status" -ne 124 ] || { echo "v4l2-compliance timed out"; exit 1; }
echo "50-cuse-compliance: OK (only the MMAP-dependent failures)"
