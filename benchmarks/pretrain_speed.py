"""Time the nano pretraining recipe's steps on this machine and extrapolate the full recipe's wall time.

Runs `--steps` steps of stage 1 (VQ) and of stage 2 (language model) with the preset's batch sizes in a scratch
folder (fresh weights; speed does not depend on them) and prints seconds per step and the projected total.
Usage: python benchmarks/pretrain_speed.py [--preset nano] [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gvu.models.pretrain import PRESETS, stage0, stage1, stage2, stage_vision  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    full = replace(PRESETS[args.preset], device=args.device)
    torch.set_num_threads(full.threads)
    with tempfile.TemporaryDirectory() as out:
        # 2 warm-up steps + the timed ones; the schedule length does not change the cost of a step
        short = replace(full, vq_steps=args.steps + 2, lm_steps=args.steps + 2, save_every=10**9,
                        vis_steps=(args.steps + 2) if full.vis_steps else 0)
        spec, tok, config = stage0(short, out)
        t = time.time()
        vq = stage1(short, out, config)
        s1 = (time.time() - t) / short.vq_steps
        t = time.time()
        vision = stage_vision(short, out, config)
        s1b = (time.time() - t) / short.vis_steps if short.vis_steps else 0.0
        t = time.time()
        stage2(short, out, spec, tok, config, vq, vision)
        s2 = (time.time() - t) / short.lm_steps
        peak = None
        try:
            import resource
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        except Exception:
            pass
    total = s1 * full.vq_steps + s1b * full.vis_steps + s2 * full.lm_steps
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {full.threads} threads",
           "stage1_s_per_step": round(s1, 3), "stage1b_s_per_step": round(s1b, 3),
           "stage2_s_per_step": round(s2, 3),
           "projected_minutes": {"stage1": round(s1 * full.vq_steps / 60, 1), "stage1b": round(s1b * full.vis_steps / 60, 1),
                                 "stage2": round(s2 * full.lm_steps / 60, 1),
                                 "total": round(total / 60, 1)},
           "peak_rss_gb": round(peak, 2) if peak else None}
    print(json.dumps(res, indent=1))
    print(f"\n| stage | steps | s/step | projected minutes |\n|---|---:|---:|---:|\n"
          f"| 1: VQ (batch {full.vq_batch}) | {full.vq_steps} | {s1:.2f} | {s1 * full.vq_steps / 60:.1f} |\n"
          f"| 1b: vision encoder (batch {full.vis_batch}) | {full.vis_steps} | {s1b:.2f} | {s1b * full.vis_steps / 60:.1f} |\n"
          f"| 2: LM (gen {full.gen_batch} + und {full.und_batch} + ranking {full.rank_images} images x 4) | {full.lm_steps} | {s2:.2f} | {s2 * full.lm_steps / 60:.1f} |\n"
          f"| total | | | {total / 60:.1f} |")


if __name__ == "__main__":
    main()
