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

# torch first and pinned, and only when .venv has none (a torch you installed there, e.g. a CUDA build, is kept).
# On this project's CPU machines pip finds a local CPU wheel of torch 2.13.0 (its find-links); left to pyproject's range
# it would pull a multi-GB CUDA build. Elsewhere, PyPI's torch==2.13.0 for Linux is itself a CUDA build: set
# GVU_TORCH_INDEX=https://download.pytorch.org/whl/cpu to take the CPU one from PyTorch's index instead.
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: installing torch==2.13.0${GVU_TORCH_INDEX:+ from $GVU_TORCH_INDEX}"
    "$PY" -m pip install --quiet ${GVU_TORCH_INDEX:+--index-url "$GVU_TORCH_INDEX"} "torch==2.13.0"
fi

stamp=.venv/.gvu-setup-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$PY" -c "import gvu" >/dev/null 2>&1; then
    echo "setup: installing gvu (editable) with test dependencies"
    "$PY" -m pip install --quiet -e ".[test]"
    echo "$want" > "$stamp"
fi
