#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh) and runs the septum demo on this host: pods in network
# namespaces, real eBPF enforcement, allowed and denied traffic, and the flow events. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/septum/target}"
exec cargo run --locked --release -q -p xtask -- demo "$@"
