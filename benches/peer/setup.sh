#!/usr/bin/env bash
# Creates benches/peer/.venv and installs the Pipecat echo bot's dependencies (pinned).
#
# Idempotent: an existing venv is reused, and pip runs only when requirements.txt or
# constraints.txt changed since the last successful install (a hash is kept in the venv).
# Needs python3 (3.10+) with the venv module and access to PyPI; no cloud services are used.
# PYTHON=/path/to/python3 picks another interpreter.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv"
python="${PYTHON:-python3}"
stamp="$venv/.requirements.sha256"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "setup: creating $venv with $("$python" --version 2>&1)"
    "$python" -m venv "$venv"
fi

want="$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    echo "setup: $venv is up to date"
else
    start=$(date +%s)
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r "$here/requirements.txt" -c "$here/constraints.txt"
    echo "$want" > "$stamp"
    echo "setup: installed in $(( $(date +%s) - start )) s"
fi

"$venv/bin/python" - <<'PY'
import importlib.metadata as m
print("setup: " + ", ".join(f"{p} {m.version(p)}" for p in ("pipecat-ai", "fastapi", "starlette", "uvicorn", "websockets", "soxr", "onnxruntime")))
PY
