#!/usr/bin/env bash
# Guest check (issue #5): the whole test corpus decoded through the CUSE frontend (USERPTR, the
# request launcher) and `daedalus-daemon --connect`, every displayed frame's hash compared with
# FFmpeg's (scripts/corpus-check.sh).
# Needs host builds: cargo build --release --workspace --bins; `just corpus`.
# vm-timeout: 1200
set -euo pipefail
# shellcheck source=tests/vm/50-cuse-lib.sh
. "$(dirname "$0")/50-cuse-lib.sh"
root=$(cd "$(dirname "$0")/../.." && pwd)
[ -f "$root/.cache/corpus/manifest.txt" ] || { echo "no corpus: run just corpus"; exit 1; }
start_server
start_daemon
CORPUS_WRAP="$cuse run --" CORPUS_DECODE_ARGS="--device /dev/video9 --media /dev/media9 --memory $mem" \
    bash "$root/scripts/corpus-check.sh"
stop_all
echo "60-corpus-cuse: OK"
