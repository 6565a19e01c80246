#!/usr/bin/env bash
# The main job: GvU self-training of the shipped nano-Janus on the nano world's train split (configs/nano.json),
# ending with a before/after table (eval and ood splits: exact score per tag and the intrinsic reward) and a plot
# of reward and eval score across steps. Each run gets its own folder under runs/ (nothing is overwritten).
# Extra arguments go to `gvu train`, e.g.  bash scripts/main.sh --set steps=20
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

OUT=runs/main-$(date +%Y%m%d-%H%M%S)
.venv/bin/gvu train --preset nano --out "$OUT" "$@"
echo "see $OUT/summary.md, $OUT/curves.png and $OUT/grids/"
