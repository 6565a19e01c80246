#!/usr/bin/env bash
# Score a nano-Janus model directory with the model card's commands, as the card's columns were scored: two 1-thread
# processes side by side on a 2-core CPU (about 6 minutes there), then print what each command printed (progress bars
# left out).
#   bash scripts/score_model.sh MODEL OUT      e.g.  bash scripts/score_model.sh runs/v13cpu/model runs/v13cpu/score
# OUT gets nano_model_eval-{understanding,generation}/results.json, auc.json and auc.npz (per-token log-probs, for
# python -m experiments.token_weighting), counting_probe/, and each command's log.
# A third argument --held-out-colours scores the VQ and understanding rows on eval scenes whose open colours may form
# held-out colour-shape pairs (gvu.nano_eval.eval_scenes; the scenes of the card's older columns).
set -euo pipefail
SCENES=""
if [ $# -eq 3 ] && [ "$3" = "--held-out-colours" ]; then
    SCENES=" --held-out-colours"
elif [ $# -ne 2 ]; then
    echo "usage: bash scripts/score_model.sh MODEL OUT [--held-out-colours]   (MODEL: a directory written by gvu pretrain, e.g. runs/X/model)" >&2
    exit 2
fi
MODEL=$(realpath -m -- "$1")  # relative to where the command was typed, before the cd below
OUT=$(realpath -m -- "$2")
cd "$(dirname "$0")/.."
for f in config.json model.safetensors tokenizer.json; do
    if [ ! -f "$MODEL/$f" ]; then
        echo "$MODEL is not a saved nano-Janus directory (no $f); give the model folder of a finished gvu pretrain run" >&2
        exit 2
    fi
done
PY=.venv/bin/python
[ -x "$PY" ] || PY=python3
mkdir -p "$OUT"

M=$(printf %q "$MODEL")  # the paths as shell words, for the command strings below
O=$(printf %q "$OUT")
children=()
trap 'kill "${children[@]}" 2>/dev/null; exit 130' INT TERM  # Ctrl-C stops both commands, not only this script

pair() {  # run two commands side by side, each logging to its file; fail if either fails
    local log1=$1 cmd1=$2 log2=$3 cmd2=$4
    echo "[$(date +%T)] $cmd1  &  $cmd2"
    bash -c "$cmd1" >"$OUT/$log1" 2>&1 &
    local p1=$!
    bash -c "$cmd2" >"$OUT/$log2" 2>&1 &
    local p2=$!
    children=("$p1" "$p2")
    local rc=0
    wait $p1 || { echo "failed, see $OUT/$log1" >&2; rc=1; }
    wait $p2 || { echo "failed, see $OUT/$log2" >&2; rc=1; }
    return $rc
}

pair understanding.log "$PY -m benchmarks.nano_model_eval --model $M --threads 1 --only vq,understanding,understanding_recon,qa$SCENES --out $O/nano_model_eval-understanding" \
     auc.log "$PY -m benchmarks.reward_auc --model $M --threads 1 --out $O --dump $O/auc.npz"
pair generation.log "$PY -m benchmarks.nano_model_eval --model $M --threads 1 --only generation,groups --out $O/nano_model_eval-generation" \
     counting.log "$PY -m experiments.counting_probe --model $M --threads 1 --out $O/counting_probe"
echo "[$(date +%T)] done; the tables each command printed:"
for log in understanding auc generation counting; do
    echo "===== $log ($OUT/$log.log)"
    tr '\r' '\n' <"$OUT/$log.log" | grep -v -E "it/s|s/it|%\|" || true
done
