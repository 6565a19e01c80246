#!/usr/bin/env bash
# Set up (idempotent), then run the tests; extra arguments go to pytest (e.g. -m slow, -k evaluator).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
