#!/usr/bin/env bash
# The nano-world demo (no model): make GenEval's eval-split prompts over the nano world, render 4 images per
# prompt, score them with the exact evaluator and print the table. Outputs go to runs/demo/ (replaced each run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

GVU=.venv/bin/gvu
OUT=runs/demo
mkdir -p "$OUT"
"$GVU" world prompts --suite geneval --split eval --seed 0 -o "$OUT/prompts.jsonl" --overwrite
"$GVU" world render "$OUT/prompts.jsonl" -o "$OUT/images" --images-per-prompt 4 --seed 0 --overwrite
"$GVU" eval "$OUT/images" --out "$OUT/results.jsonl" --overwrite
