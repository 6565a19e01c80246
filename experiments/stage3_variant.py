"""Rerun stage 3 of nano-Janus with changed settings, from a finished pretraining folder's stage-2 weights.

A stage-3 ablation needs no new stage 2: this copies the VQ (stage1.pt), the stage-1b encoder (vision.pt), the
stage-2 weights (stage2.pt), config.json and the tokenizer from FROM (a `gvu pretrain` or stage2_variants.py
folder; v5's is the one `experiments/stage2_variants.py ... --variant L` writes, model card "Where v5 ran"), writes
FROM's pretrain_config.json with the overrides into OUT, and runs the pretraining pipeline there, which finds
stages 1-2 done and trains stage 3 only. OUT/model is the new model; score it with benchmarks/nano_model_eval.py.

Usage: python -m experiments.stage3_variant --from runs/v5cpu/L --out runs/v6x/X --set und_extra=0.5 [--set threads=1]
Resumable: rerun the same command to continue stage 3.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil


COPIED = ("stage1.pt", "vision.pt", "stage2.pt", "config.json", "tokenizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="src", required=True, help="a finished pretraining folder with stage2.pt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a PretrainConfig field for stage 3 (JSON value: 0.5, true, \"text\")")
    args = ap.parse_args()
    from gvu.models.pretrain import PretrainConfig, RunFolder, pretrain

    missing = [f for f in COPIED + ("pretrain_config.json",) if not os.path.exists(os.path.join(args.src, f))]
    if missing:
        ap.error(f"{args.src} lacks {missing}: give a pretraining folder whose stage 2 has finished")
    with open(os.path.join(args.src, "pretrain_config.json")) as f:
        cfg = json.load(f)
    for kv in args.set:
        key, _, value = kv.partition("=")
        if key not in PretrainConfig.__dataclass_fields__:
            ap.error(f"--set {kv}: {key!r} is not a PretrainConfig field")
        try:
            cfg[key] = json.loads(value)
        except json.JSONDecodeError:
            cfg[key] = value
    try:  # before anything is copied in: never into a saved model or a folder of other files
        RunFolder.check_folder(args.out)
    except ValueError as e:
        ap.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    for name in COPIED:
        dst = os.path.join(args.out, name)
        if not os.path.exists(dst):
            (shutil.copytree if os.path.isdir(os.path.join(args.src, name)) else shutil.copy2)(
                os.path.join(args.src, name), dst)
    try:
        print(pretrain(PretrainConfig(**cfg), args.out))
    except ValueError as e:  # OUT holds a run with other settings
        ap.error(str(e))


if __name__ == "__main__":
    main()
