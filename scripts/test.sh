#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs septum's whole test suite: formatting, lints,
# and every test, privileged ones included (eBPF programs, network namespaces). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/septum/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
echo "[test] cargo fmt --check"
cargo fmt --all -- --check
echo "[test] cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] cargo test"
cargo test --workspace --locked -- --test-threads="${SEPTUM_TEST_THREADS:-4}"
echo "[test] all passed"
