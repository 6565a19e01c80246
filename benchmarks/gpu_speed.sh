#!/usr/bin/env bash
# Issue 53's GPU measurements in one call (about 6-9 minutes on one H100; each part has its own time limit, and a
# part that fails or runs out of time leaves the others' results):
#   1. rollout engines on Janus-Pro-1B-sized random weights (bf16): eager and static at 64 CFG rows, compiled at
#      32, 64 and 128 rows; images/s, ms per decoding step, peak memory, fraction of the memory-bandwidth floor
#   2. the same on Janus-Pro-7B-sized random weights: eager and compiled at 32 rows
#   3. the whole GvU step (rollout, reward, update; preset janus-pro-1b, LoRA) in images/s, eager then compiled
#
#   bash benchmarks/gpu_speed.sh [OUT]        (OUT defaults to results/gpu_speed; BANDWIDTH=4.8e12 on an H200)
# Run from the repository root. Every table is also printed, and written as JSON under OUT.
set -u
OUT=${1:-results/gpu_speed}
BW=${BANDWIDTH:-3.35e12}
mkdir -p "$OUT"
PY=${PYTHON:-python}
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$OUT/gpu.txt"

part() {  # part NAME SECONDS COMMAND...: run with a time limit, log to OUT/NAME.log, go on after a failure
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log" | grep -v "Loading weights" || true
  echo "== $name: exit ${PIPESTATUS[0]}"
}

part engines_1b_64 150 $PY -m benchmarks.rollout_engines --device cuda --sizes 1b --rows 64 \
  --engines eager,static,compiled --repeats 1 --bandwidth "$BW" --out "$OUT/engines_1b_64.json"
part engines_1b_rows 150 $PY -m benchmarks.rollout_engines --device cuda --sizes 1b --rows 32,128 \
  --engines compiled --repeats 1 --bandwidth "$BW" --out "$OUT/engines_1b_rows.json"
part engines_7b_32 200 $PY -m benchmarks.rollout_engines --device cuda --sizes 7b --rows 32 \
  --engines eager,compiled --repeats 1 --bandwidth "$BW" --out "$OUT/engines_7b_32.json"
part step_eager 120 $PY -m benchmarks.gpu_check --sizes 1b --prompts 16 --engine eager --out "$OUT/step_eager"
part step_compiled 120 $PY -m benchmarks.gpu_check --sizes 1b --prompts 16 --engine compiled --out "$OUT/step_compiled"
