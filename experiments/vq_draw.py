"""Issue 3: how much the stage-1 VQ tokenizer varies between draws (seeds) of the same recipe.

Runs stages 0, 1 and 1c of a preset with another --seed into OUT (resumable: each stage keeps its checkpoint), then
scores the VQ as `benchmarks/nano_model_eval.py --only vq` does: the exact evaluator on reconstructions of the 553
eval-split renderings, once with stage 1's decoder and once after stage 1c. The seed changes the VQ's initial
weights and its training scenes (and the tokenizer's corpus, which the VQ does not use).

Usage: python experiments/vq_draw.py --seed 1 --out runs/vqdraw-s1 [--preset nano] [--threads 2]
Prints the two scores and writes OUT/vq_draw.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))


def score(vq_state: dict, config, tok, spec, out_dir: str) -> dict:
    """The VQ inside an otherwise untrained model directory, scored by nano_model_eval's bench_vq."""
    import torch
    from nano_model_eval import bench_vq, eval_scenes
    from transformers import JanusForConditionalGeneration

    from gvu.models.janus import JanusBackend
    from gvu.models.pretrain import save_model

    if not os.path.exists(os.path.join(out_dir, "config.json")):
        torch.manual_seed(0)
        model = JanusForConditionalGeneration(config)
        model.model.vqmodel.load_state_dict(vq_state)
        save_model(model, tok, spec, out_dir)
    return bench_vq(JanusBackend.from_pretrained(out_dir), eval_scenes(None, seed=99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import torch

    from gvu.models.pretrain import PRESETS, stage0, stage1, stage_decoder

    if args.preset not in PRESETS:
        ap.error(f"unknown preset {args.preset!r}; choose from {sorted(PRESETS)}")
    cfg = replace(PRESETS[args.preset], seed=args.seed, **({"threads": args.threads} if args.threads else {}))
    torch.set_num_threads(cfg.threads)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    spec, tok, config = stage0(cfg, args.out)
    vq = stage1(cfg, args.out, config)
    t1 = time.time()
    before = score(vq, config, tok, spec, os.path.join(args.out, "model-stage1"))
    t2 = time.time()
    vq = stage_decoder(cfg, args.out, config, vq)
    t3 = time.time()
    after = score(vq, config, tok, spec, os.path.join(args.out, "model-stage1c"))
    res = {"preset": args.preset, "seed": args.seed, "threads": cfg.threads,
           "vq_after_stage1": before["overall"], "vq_after_stage1c": after["overall"],
           "per_tag_after_stage1c": after["per_tag"], "stage1_minutes": round((t1 - t0) / 60, 1),
           "stage1c_minutes": round((t3 - t2) / 60, 1)}
    with open(os.path.join(args.out, "vq_draw.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
