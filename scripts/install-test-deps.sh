#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain. Idempotent; safe to rerun.
# The G.711 reference vectors come from ../shared/data/g711-stl (beside the repository).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
shared="$here/../../shared/data/g711-stl"
if [ ! -f "$shared/sweep.src" ]; then
  echo "missing $shared/sweep.src: the ITU-T G.191 vectors must sit in ../shared beside the repository" >&2
  exit 1
fi
echo "g711 reference vectors: $shared"
