#!/usr/bin/env bash
# `just vm-selftest`: boots the guest with visl + vicodec and runs vm/selftest-guest.sh in it
# (v4l2-compliance -s against visl, GStreamer v4l2codecs through visl, FFmpeg), then prints the
# compliance summary lines, the accelerator and the boot time. Exit status: the guest script's.
set -euo pipefail
# shellcheck source=vm/lib.sh
. "$(dirname "$0")/lib.sh"
sum=$(mktemp)
log=$(mktemp)
trap 'rm -f "$sum" "$log"' EXIT
start=$(date +%s)
rc=0
VM_ENV="${VM_ENV:-} VM_SELFTEST_FULL" VM_MODPROBE="visl vicodec ${VM_MODPROBE:-}" VM_SUMMARY=$sum VM_TIMEOUT=${VM_TIMEOUT:-1200} \
    "$VM_DIR/run.sh" "$VM_DIR/selftest-guest.sh" | tee "$log" || rc=$?
end=$(date +%s)
echo "================ vm-selftest summary"
grep -E '^(COMPLIANCE|SELFTEST):' "$log" || true
read -r -a kv <"$sum" || true
for f in "${kv[@]}"; do
    case $f in accel=* | boot=* | kernel=* | setup=*) printf '%s\n' "${f%%=*}: ${f#*=}" ;; esac
done
echo "total: $((end - start))s"
echo "result: $([ $rc = 0 ] && echo PASS || echo "FAIL (exit $rc)")"
exit $rc
