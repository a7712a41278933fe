#!/usr/bin/env bash
# Decodes every corpus stream with `daedalus decode --framemd5` and compares
# each displayed frame's MD5 with FFmpeg's software decode (made by
# scripts/corpus.sh). Streams listed in tests/corpus-known-failures.txt are
# expected to fail (the stack cannot decode them yet): they are reported by
# name every run, and one that starts passing fails the check so the list
# stays true. Usage: scripts/corpus-check.sh [CORPUS_DIR] [DAEDALUS_BIN]
# CORPUS_DECODE_ARGS adds arguments to `daedalus decode` (e.g. --device
# /dev/video0), CORPUS_WRAP runs it under a command (e.g. the CUSE launcher):
# the VM suites decode the corpus through the kernel module and CUSE this way.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-$root/.cache/corpus}
bin=${2:-${CARGO_TARGET_DIR:-$root/target}/release/daedalus}
known=$root/tests/corpus-known-failures.txt
[ -x "$bin" ] || { echo "corpus-check: $bin not built" >&2; exit 2; }
[ -f "$dir/manifest.txt" ] || { echo "corpus-check: no manifest in $dir (run just corpus)" >&2; exit 2; }
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
streams=0 frames=0 mismatches=0 passed=0 failed=0 xfail=0
declare -a problems=()
while read -r file pix n; do
    name=${file%.*}
    streams=$((streams + 1))
    reason=$(awk -v s="$name" '$1 == s { $1 = ""; sub(/^ /, ""); print; exit }' "$known" 2>/dev/null)
    # shellcheck disable=SC2086
    if timeout 300 ${CORPUS_WRAP:-} "$bin" decode "$dir/$file" --framemd5 "$tmp/$name.md5" ${CORPUS_DECODE_ARGS:-} >"$tmp/$name.out" 2>&1; then
        ok=1
    else
        ok=0
    fi
    grep -v '^#' "$dir/$name.framemd5" | awk -F, '{gsub(/ /, "", $6); print $6}' > "$tmp/want"
    if [ -f "$tmp/$name.md5" ]; then
        grep -v '^#' "$tmp/$name.md5" | awk -F, '{gsub(/ /, "", $6); print $6}' > "$tmp/got"
    else
        : > "$tmp/got"
    fi
    got_n=$(wc -l < "$tmp/got")
    bad=$(paste -d' ' "$tmp/want" "$tmp/got" | awk '$1 != $2' | wc -l)
    extra=$((got_n > n ? got_n - n : 0))
    bad=$((bad + extra))
    if [ "$ok" = 1 ] && [ "$bad" = 0 ] && [ "$got_n" = "$n" ]; then
        frames=$((frames + n))
        if [ -n "$reason" ]; then
            failed=$((failed + 1))
            problems+=("$name: passes but is listed in tests/corpus-known-failures.txt: remove it")
            printf '%-32s %4s frames  PASS (listed as a known failure!)\n' "$name" "$n"
        else
            passed=$((passed + 1))
            printf '%-32s %4s frames  ok\n' "$name" "$n"
        fi
    else
        err=$(tail -1 "$tmp/$name.out")
        if [ -n "$reason" ]; then
            xfail=$((xfail + 1))
            printf '%-32s %4s frames  KNOWN FAILURE (%s): %s\n' "$name" "$n" "$reason" "$err"
        else
            failed=$((failed + 1))
            mismatches=$((mismatches + bad))
            problems+=("$name: exit ok=$ok, $got_n/$n frames, $bad mismatching: $err")
            printf '%-32s %4s frames  FAIL: %s/%s frames, %s mismatching: %s\n' "$name" "$n" "$got_n" "$n" "$bad" "$err"
        fi
    fi
done < "$dir/manifest.txt"
echo "corpus: $streams streams, $frames frames compared, $mismatches mismatching frames, $xfail known failures"
for p in "${problems[@]}"; do echo "  $p"; done
echo "corpus: $passed passed, $failed failed"
[ "$failed" = 0 ]
