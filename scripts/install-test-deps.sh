#!/usr/bin/env bash
# Checks, and where it can installs, what the default test suite (`cargo test`) needs beyond the
# repository itself: a Rust toolchain at least as new as the workspace's `rust-version`, and the
# `kill` command (procps) that the shell's binary tests use to send SIGTERM. Nothing else: the
# tests make or ship all their data. Idempotent; safe to rerun. Exits non-zero, saying what to
# do, when something is missing and cannot be installed here.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=0
say() { echo "install-test-deps: $*"; }
fail() {
  echo "install-test-deps: $*" >&2
  missing=1
}

# Rust toolchain: cargo and rustc, no older than rust-version in Cargo.toml.
need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n 1)
if ! command -v cargo >/dev/null 2>&1 || ! command -v rustc >/dev/null 2>&1; then
  fail "cargo/rustc not found: install Rust $need or newer (rustup, or your distribution's" \
    "rustc and cargo packages) and put cargo on PATH"
else
  have=$(rustc --version | awk '{print $2}')
  if [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -n 1)" != "$need" ]; then
    fail "rustc $have is older than the workspace's rust-version $need: update it" \
      "(rustup update stable, or a newer distribution package)"
  else
    say "rustc $have (needs $need or newer)"
  fi
fi

# kill(1), the program rather than the shell builtin: shell/tests send SIGTERM with it.
if ! type -P kill >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing procps (for kill)"
    apt-get install -y -q procps >/dev/null 2>&1 ||
      { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q procps >/dev/null 2>&1; } ||
      true
  fi
fi
if type -P kill >/dev/null; then
  say "kill: $(type -P kill)"
else
  fail "the kill program was not found and could not be installed: install procps" \
    "(Debian/Ubuntu: apt-get install procps) or another package that puts kill on PATH"
fi

# Optional: the ITU-T G.191 vector files. Without them the µ-law golden test checks CRC-32s only.
if [ -f ../shared/data/g711-stl/sweep.src ]; then
  say "G.711 vectors in ../shared/data/g711-stl: the golden test also compares sample by sample"
else
  say "no ../shared/data/g711-stl: the golden test checks the reference CRC-32s only (enough)"
fi

if [ "$missing" != 0 ]; then
  echo "install-test-deps: something the tests need is missing; see the messages above" >&2
  exit 1
fi
say "ready for cargo test"
