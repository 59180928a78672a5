#!/usr/bin/env bash
# Replays the committed fuzz corpus (fuzz/corpus/<target>/ and fixed inputs in
# fuzz/regressions/<target>/) through the fuzz targets' checks on stable Rust, with no fuzzing
# runtime: `cargo test` on the fuzz crate, which lives outside the workspace (fuzz/Cargo.toml is
# its own workspace with its own Cargo.lock). Also runs the targets' own unit tests.
# Not `--locked`: the fuzz crate's lock file also pins the engine's and the shell's dependencies,
# so a dependency added to either would otherwise break this replay until fuzz/Cargo.lock is
# refreshed; cargo updates it in place instead, keeping every version already pinned.
# Extra arguments go to `cargo test`, e.g. `scripts/fuzz-replay.sh -- --include-ignored` to also
# check that open findings (fuzz/regressions/open/) still reproduce.
# See docs/fuzzing.md for running the fuzzers themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --manifest-path fuzz/Cargo.toml "$@"
