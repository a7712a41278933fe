# daedalus-v4l2 tasks. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# VM harness recipes (vm, vm-shell, vm-selftest, test-vm, ...).
import 'vm/vm.just'

default:
    @just --list

# Build everything (release).
build: uapi
    cargo build --release --workspace

# Decode a file through the whole stack (embedded frontend + daemon in one process).
decode INPUT *ARGS: build
    target/release/daedalus decode {{INPUT}} {{ARGS}}

# Lints: rustfmt, clippy with warnings denied, rustdoc with warnings denied.
lint: uapi
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps -q

# Linux 6.12 uAPI headers for the control layout tests (.cache/uapi).
uapi:
    bash scripts/uapi-headers.sh >/dev/null

# Native test suites (no VM): unit, property (>= 100,000 steps), golden, layout, scenario tests.
test-native: uapi
    cargo test --workspace --release
    @echo "== state machine property run (step count):"
    cargo test -q --release -p decoder-core --test state_props -- --nocapture 2>&1 | grep -E 'state machine|jobs done|steps with|test result'
    @echo "== scenarios on decoder-core:"
    cargo test -q --release -p decoder-core --test scenarios -- --nocapture 2>&1 | grep -E '^scenario|scenarios,|test result'

# Every test: lints, native suites, then the VM suites.
test: lint test-native test-corpus build-all test-vm

# The kernel module (kernel/daedalus.ko) for the VM's Debian 6.12 kernel, W=1; any compiler
# warning fails the build.
kmod:
    #!/usr/bin/env bash
    set -euo pipefail
    kdir=$(vm/kdir); symvers=$(vm/kdir --symvers)
    mkdir -p .cache
    make -C kernel KDIR="$kdir" KBUILD_EXTRA_SYMBOLS="$symvers" W=1 2>&1 | tee .cache/kmod-build.log
    if grep -E '(warning|error):' .cache/kmod-build.log; then echo "kmod: the build has warnings"; exit 1; fi
    # checkpatch (from the linux-source .deb the VM cache holds) and kernel-doc: both silent.
    d=.cache/vm/checkpatch; abi=$(vm/kdir --abi)
    if [ ! -f $d/linux-source-6.12/scripts/checkpatch.pl ]; then
        mkdir -p $d
        dpkg-deb --fsys-tarfile .cache/vm/debs/$abi/linux-source-6.12_*.deb | tar -xO ./usr/src/linux-source-6.12.tar.xz |
            tar -xJ -C $d linux-source-6.12/scripts/checkpatch.pl linux-source-6.12/scripts/spelling.txt linux-source-6.12/scripts/const_structs.checkpatch
    fi
    perl $d/linux-source-6.12/scripts/checkpatch.pl --no-tree --strict -q -f kernel/daedalus-*.c kernel/daedalus.h include/daedalus_bridge.h
    perl "$kdir/scripts/kernel-doc" -none -Wall -Werror kernel/daedalus-*.c kernel/daedalus.h include/daedalus_bridge.h
    echo "kmod: W=1, checkpatch --strict and kernel-doc clean"

# Release binaries and examples the VM suites run, and the kernel module.
build-all: uapi kmod
    cargo build --release --workspace --bins --examples
    cargo test --release -p daedalus --bin daedalus --no-run
    cargo test --release -p daedalus-daemon --test dmabuf --no-run

# Fuzz each cargo-fuzz target for SECONDS (nightly if installed, else stable with RUSTC_BOOTSTRAP).
fuzz SECONDS="30":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked -q
    tc=""; if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then tc="+nightly"; else export RUSTC_BOOTSTRAP=1; fi
    cd fuzz
    for t in $(cargo $tc fuzz list); do
        echo "== fuzz $t for {{SECONDS}} s"
        cargo $tc fuzz run "$t" -- -max_total_time={{SECONDS}} 2>&1 | grep -E '^(Done|==|SUMMARY)|panicked|ERROR' || true
        [ "${PIPESTATUS[0]}" = 0 ] || { echo "fuzz target $t failed"; exit 1; }
    done

# Generate the test corpus (Debian's encoders) with FFmpeg's reference framemd5 (.cache/corpus).
corpus:
    bash scripts/corpus.sh

# Decode the whole corpus through the embedded stack and compare every frame with FFmpeg.
test-corpus: corpus uapi
    cargo build --release -p daedalus
    bash scripts/corpus-check.sh

# Frames/s of `daedalus decode` against direct libavcodec/dav1d decode of 1080p streams, as ratios;
# then the device paths (kernel module, CUSE) in the VM.
bench: uapi
    cargo build --release -p daedalus
    cargo build --release -p daedalus-daemon --example wake_floor --example plain_decode --example backend_alone
    bash scripts/bench.sh
    just bench-vm

# The kernel-module and CUSE paths against direct FFmpeg decode in the same VM guest, as ratios.
bench-vm: uapi kmod
    cargo build --release --workspace --bins
    bash scripts/bench-vm-streams.sh
    VM_TIMEOUT=1800 vm/run.sh bash scripts/bench-vm.sh
