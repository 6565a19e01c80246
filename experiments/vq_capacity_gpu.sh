#!/usr/bin/env bash
# Issue 3, VQ target (>= 0.98): does the stage-1 VQ recipe reach it with more capacity or more steps? Seven
# `python -m experiments.vq_draw` runs side by side on one GPU (each its own process, 2 CPU threads), all on the nano-v5
# preset (nano when this ran, 2026-11-28; today's nano is its 4,000-step result): nano-v5 as it is (seeds 0 and 1,
# the draws measured on the CPU: 0.873 and 0.942), 64 base channels instead of 32 (seeds 0, 1), 4,000
# stage-1 steps instead of 2,000 (seeds 0, 1) and 2 residual blocks per level (seed 0). Each run scores its VQ as
# `python -m benchmarks.nano_model_eval --only vq` does (553 eval-split renderings, exact evaluator).
# Usage: bash experiments/vq_capacity_gpu.sh OUT [SECONDS]   (SECONDS: stop each run after this long; default 560:
# on an H200 the 4,000-step runs need about 7 minutes beside the others)
# Writes OUT/<name>/vq_draw.json per finished run and prints one table row per run.
set -u
OUT=${1:?usage: bash experiments/vq_capacity_gpu.sh OUT [SECONDS]}
LIMIT=${2:-560}
OUT=$(realpath -m -- "$OUT")  # relative to where the command was typed, before the cd below
cd "$(dirname "$0")/.."  # the repo root: python -m finds gvu and experiments there
mkdir -p "$OUT"
run() {  # name seed [vq_draw arguments]
  local name=$1 seed=$2; shift 2
  timeout -s INT "$LIMIT" python3 -m experiments.vq_draw --preset nano-v5 --seed "$seed" --out "$OUT/$name" --set device=cuda \
    "$@" > "$OUT/$name.log" 2>&1
}
run base-s0 0 & run base-s1 1 &
run ch64-s0 0 --spec vq_base_channels=64 & run ch64-s1 1 --spec vq_base_channels=64 &
run steps4k-s0 0 --set vq_steps=4000 & run steps4k-s1 1 --set vq_steps=4000 &
run res2-s0 0 --spec vq_res_blocks=2 &
wait
python3 -m experiments.vq_draw --report "$OUT"
