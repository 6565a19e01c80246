#!/usr/bin/env bash
# Idempotent set-up for a fresh clone: a .venv with torch and the gvu package (editable) plus test deps.
# A second run is quick: it reinstalls only when pyproject.toml changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    python3 -m venv .venv
fi
PY=.venv/bin/python

# torch first and pinned: left to pyproject's range, pip would pull a multi-GB CUDA build here.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch==2.13.0"
    "$PY" -m pip install --quiet "torch==2.13.0"
fi

stamp=.venv/.gvu-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$PY" -c "import gvu" >/dev/null 2>&1; then
    echo "setup: installing gvu (editable) with test dependencies"
    "$PY" -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
fi
