#!/usr/bin/env bash
# Runs every executable DIR/*.sh inside the guest, one boot per script, and reports each result.
# A script can ask for modules with a line "# vm-modprobe: visl vicodec" and for a longer limit
# with "# vm-timeout: SECONDS". Exit status: 0 when every script passed.
# Usage: vm/run-suite.sh DIR [NAME-FILTER-ERE]
set -uo pipefail
# shellcheck source=vm/lib.sh
. "$(dirname "$0")/lib.sh"
dir=${1:?usage: $0 DIR [FILTER]}
filter=${2:-.}
dir=$(cd "$dir" && pwd)
failed=()
n=0
for t in "$dir"/*.sh; do
    [ -x "$t" ] || continue
    grep -qE -- "$filter" <<<"${t##*/}" || continue
    n=$((n + 1))
    mods=$(sed -n 's/^# vm-modprobe: *//p' "$t" | head -1)
    tmo=$(sed -n 's/^# vm-timeout: *//p' "$t" | head -1)
    echo "=== vm test ${t#"$PROJECT_ROOT"/}"
    start=$(date +%s)
    if VM_MODPROBE="${VM_MODPROBE:-} $mods" VM_TIMEOUT=${tmo:-${VM_TIMEOUT:-1200}} "$VM_DIR/run.sh" "$t"; then
        echo "=== PASS ${t##*/} ($(($(date +%s) - start))s)"
    else
        echo "=== FAIL ${t##*/} ($(($(date +%s) - start))s)"
        failed+=("${t##*/}")
    fi
done
echo "vm tests: $n run, ${#failed[@]} failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} -eq 0 ]
