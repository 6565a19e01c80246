#!/usr/bin/env bash
# python -m experiments.compare_rewards on one GPU: each (row, seed) trains and is evaluated in its own process, all at once.
# Usage: bash experiments/compare_gpu.sh OUT ROWS SEEDS SECONDS [compare_rewards arguments...]
#   ROWS and SEEDS comma-separated (base runs once, as seed 0); SECONDS stops every process after that long (what
#   finished stays: compare_rewards caches each result as it lands, final step first, then --eval-at's steps).
#   e.g. bash experiments/compare_gpu.sh runs/cmp-v8-gpu base,gvu_policy 0,1,2 480 --steps 600 --eval-at 150 300 450
# Every process gets --set device=cuda; give the speed fields (--threads, --set evaluator_workers=N) yourself.
# Before the rows start, a 2-step training run with an 8-prompt evaluation checks the CUDA path (a broken one then
# costs seconds, not a whole run). Afterwards OUT/results.tar.gz holds every result, config, metric log and process
# log (no checkpoints). Each process also writes OUT/table.md and OUT/budget.png for its own row, the last one
# winning; `python -m experiments.compare_rewards --out OUT ... --set device=cuda` with the same
# arguments prints the table from the cache once every row it names has a result.
set -u
OUT=${1:?usage: bash experiments/compare_gpu.sh OUT ROWS SEEDS SECONDS [compare_rewards arguments...]}
ROWS=${2:?ROWS, e.g. base,gvu_policy}
SEEDS=${3:?SEEDS, e.g. 0,1}
LIMIT=${4:?SECONDS}
shift 4
OUT=$(realpath -m -- "$OUT")  # relative to where the command was typed, before the cd below
cd "$(dirname "$0")/.."  # the repo root: python -m finds gvu and experiments there
mkdir -p "$OUT"
t0=$(date +%s)
python3 -m gvu train --preset nano --out "$OUT/cuda-check" --set device=cuda --set steps=2 --set eval_every=0 \
  --set grid_every=0 --set final_eval_prompts=8 > "$OUT/cuda-check.log" 2>&1 \
  || { echo "the CUDA check failed; its log:"; tail -40 "$OUT/cuda-check.log"; exit 1; }
echo "CUDA check passed in $(( $(date +%s) - t0 )) s"
for row in ${ROWS//,/ }; do
  seeds=$SEEDS
  [ "$row" = base ] && seeds=0
  for s in ${seeds//,/ }; do
    timeout -s INT "$LIMIT" python3 -m experiments.compare_rewards --rows "$row" --seeds "$s" --out "$OUT" \
      --set device=cuda "$@" > "$OUT/$row-s$s.log" 2>&1 &
  done
done
wait
echo "rows done or stopped after $(( $(date +%s) - t0 )) s"
(cd "$OUT" && find . -name 'result*.json' -o -name config.json -o -name 'metrics.jsonl' -o -name '*-s*.log' \
  | grep -v -e checkpoints -e cuda-check | tar czf results.tar.gz -T -)
find "$OUT" -name 'result*.json' | sort
