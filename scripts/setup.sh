#!/usr/bin/env bash
# Installs everything septum needs on a fresh Debian 12 machine, idempotently.
# Re-running it when everything is present takes a few seconds and changes nothing.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh must run as root (it installs apt packages and loads eBPF programs)" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
APT_PACKAGES=(rustc-web cargo-web libstd-rust-web-dev-bpf iproute2 nftables openssl
  containernetworking-plugins sqlite3 protobuf-compiler ca-certificates python3
  containerd runc busybox-static)

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
  done
}

# rustc-web must come from bookworm-security (1.96); a stale apt cache only knows 1.85.
need=$(missing_packages "${APT_PACKAGES[@]}")
if [ -n "$need" ]; then
  log "installing apt packages: $need"
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# The eBPF toolchain: Debian's rustc linked into rustup as 'debian'.
if ! rustup toolchain list | grep -q '^debian'; then
  log "linking Debian's rustc as rustup toolchain 'debian'"
  rustup toolchain link debian /usr
fi

llvm_major=$(rustc +debian -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
if [ -z "$llvm_major" ]; then
  echo "cannot read the LLVM version of Debian's rustc (rustc +debian -vV)" >&2
  exit 1
fi
need=$(missing_packages "llvm-${llvm_major}-dev")
if [ -n "$need" ]; then
  log "installing llvm-${llvm_major}-dev to match rustc-web"
  apt-get install -y -qq --no-install-recommends "llvm-${llvm_major}-dev" >/dev/null || {
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "llvm-${llvm_major}-dev" >/dev/null
  }
fi

BPF_LINKER_VERSION=0.13.0
stamp="$HOME/.cargo/.septum-bpf-linker-llvm${llvm_major}-${BPF_LINKER_VERSION}"
if ! command -v bpf-linker >/dev/null 2>&1 || [ ! -f "$stamp" ]; then
  log "building bpf-linker ${BPF_LINKER_VERSION} against LLVM ${llvm_major} (a few minutes, once)"
  LLVM_PREFIX="/usr/lib/llvm-${llvm_major}" cargo install --locked --force \
    "bpf-linker@${BPF_LINKER_VERSION}" --no-default-features --features "llvm-${llvm_major}"
  touch "$stamp"
fi

# bpffs for pinned maps, programs and links.
if ! mountpoint -q /sys/fs/bpf; then
  log "mounting bpffs at /sys/fs/bpf"
  mount -t bpf bpf /sys/fs/bpf
fi

log "ready: rustc +debian (LLVM ${llvm_major}), bpf-linker $(bpf-linker --version 2>/dev/null | awk '{print $2}')"
