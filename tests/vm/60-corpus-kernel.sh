#!/usr/bin/env bash
# Guest check (issues #5/#6): the whole test corpus (scripts/corpus.sh, made on the host by
# `just corpus`) decoded through kernel/daedalus.ko with MMAP buffers and `daedalus-daemon
# --bridge`, every displayed frame's hash compared with FFmpeg's (scripts/corpus-check.sh).
# Needs host builds: `just kmod`, cargo build --release -p daedalus -p daedalus-daemon.
# vm-timeout: 1200
set -euo pipefail
# shellcheck source=tests/vm/40-kernel-lib.sh
. "$(dirname "$0")/40-kernel-lib.sh"
[ -f "$root/.cache/corpus/manifest.txt" ] || { echo "no corpus: run just corpus"; exit 1; }
kload
start_daemon
CORPUS_DECODE_ARGS="--device $dev --memory ${MEMORY:-mmap}" bash "$root/scripts/corpus-check.sh"
stop_daemon
rmmod daedalus
echo "60-corpus-kernel: OK"
