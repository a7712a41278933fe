#!/usr/bin/env bash
# Guest check: the daemon's DV_MEM_DMABUF path with real dmabufs (udmabuf is built into the
# 6.12 kernel): registration, DMA_BUF_IOCTL_SYNC around CPU access, decode into a dmabuf
# CAPTURE buffer. On the host these tests cannot run (no /dev/udmabuf); here they must.
# Needs the host build: cargo test --release -p daedalus-daemon --test dmabuf --no-run
# vm-timeout: 300
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
bin=$(ls -t "$target"/release/deps/dmabuf-* 2>/dev/null | grep -v '\.d$' | head -1 || true)
[ -n "$bin" ] && [ -x "$bin" ] || { echo "missing the dmabuf test binary: cargo test --release -p daedalus-daemon --test dmabuf --no-run"; exit 1; }
ls -l /dev/udmabuf
DAEDALUS_REQUIRE_UDMABUF=1 "$bin" --test-threads=1
