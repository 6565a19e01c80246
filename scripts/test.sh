#!/usr/bin/env bash
# Set up (idempotent), lint, then run the tests; extra arguments go to pytest (e.g. -m slow, -k evaluator).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .  # rules and line length: [tool.ruff] in pyproject.toml; a finding fails the run here
exec .venv/bin/python -m pytest -q "$@"
