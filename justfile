# daedalus-v4l2 tasks. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# VM harness recipes (vm, vm-selftest, ...).
import? 'vm/vm.just'

default:
    @just --list

# Build everything (release).
build:
    cargo build --release --workspace

# Lints: rustfmt, clippy with warnings denied, rustdoc.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

# Native test suites (no VM).
test-native:
    cargo test --workspace --release

# Every test: lints, native suites, then the VM suites.
test: lint test-native
