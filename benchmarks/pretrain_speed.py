"""Time the nano pretraining recipe's steps on this machine and extrapolate the full recipe's wall time.

Runs `--steps` steps of every stage of the preset (1, 1c, 1b, 2, 3) with the preset's batch sizes in a scratch
folder (fresh weights; speed does not depend on them) and prints seconds per step and the projected total. A stage's
seconds per step are timed from its 20th step to its last (the stages log every 20 steps), so that warm-up and
torch.compile's one-off compilation (preset field torch_compile) stay out of them; what the first 20 steps took beyond
20 such steps is reported as the stage's warm-up and added to the total once. Stage 1 restarts unused codes every 50
steps (nano), and its first restart compiles the encoder once more inside the timed steps, so the projection errs a
few seconds high. `--set torch_compile=false` times the same preset eagerly. Usage: python -m benchmarks.pretrain_speed [--preset nano] [--steps 60] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from dataclasses import replace

import torch

from gvu.models.pretrain import (PRESETS, parse_overrides, stage0, stage1, stage2, stage3, stage_decoder,
                                 stage_vision, use_bf16)
from gvu.models.stage_timing import stage_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--steps", type=int, default=60, help="steps a stage runs: a multiple of 20, at least 40")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="preset fields to change")
    args = ap.parse_args()
    if args.steps < 40 or args.steps % 20:
        ap.error(f"--steps {args.steps}: give a multiple of 20, at least 40 (steps 21 to the last are timed)")
    full = replace(PRESETS[args.preset], device=args.device, **parse_overrides(args.set))
    torch.set_num_threads(full.threads)
    n = args.steps  # the schedule length does not change the cost of a step
    per_step, warm = {}, {}  # stage -> seconds per step; seconds the first 20 steps took beyond 20 timed ones

    def timed(name, steps, fn):
        if not steps:
            per_step[name] = warm[name] = 0.0
            return None
        result = fn()
        times = stage_times(out, name)  # the stage's log records at steps 20, 40, ..., n
        per_step[name] = (times[-1] - times[0]) / (n - 20)
        warm[name] = max(0.0, times[0] - 20 * per_step[name])
        return result

    with tempfile.TemporaryDirectory() as out:
        short = replace(full, vq_steps=n, lm_steps=n, save_every=10**9, vis_steps=n if full.vis_steps else 0,
                        dec_steps=n if full.dec_steps else 0, s3_steps=n if full.s3_steps else 0)
        spec, tok, config = stage0(short, out)
        vq = timed("1", short.vq_steps, lambda: stage1(short, out, config))
        vq = timed("1c", short.dec_steps, lambda: stage_decoder(short, out, config, vq)) or vq
        vision = timed("1b", short.vis_steps, lambda: stage_vision(short, out, config))
        model = timed("2", short.lm_steps, lambda: stage2(short, out, spec, tok, config, vq, vision))
        timed("3", short.s3_steps, lambda: stage3(short, out, spec, tok, model))
        peak = None
        try:
            import resource
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        except Exception:
            pass
    vq_label = "1: VQ (batch %d)" % full.vq_batch
    if full.vq_crop:  # the timed steps mix crops and whole images as the recipe does (every vq_full_every-th whole)
        vq_label = (f"1: VQ ({full.vq_crop_batch} crops of {full.vq_crop}x{full.vq_crop}"
                    + (f", every {full.vq_full_every}th step {full.vq_batch} whole images)" if full.vq_full_every else ")"))
    rows = [(vq_label, "1", full.vq_steps),
            ("1c: VQ decoder (batch %d)" % full.dec_batch, "1c", full.dec_steps),
            ("1b: vision encoder (batch %d)" % full.vis_batch, "1b", full.vis_steps),
            (f"2: LM (gen {full.gen_batch} + und {full.und_batch} + ranking {full.rank_images} images x 4)", "2", full.lm_steps),
            (f"3: LM, {full.und_recon:.0%} of understanding images reconstructed", "3", full.s3_steps)]
    minutes = {k: (per_step[k] * steps + warm[k]) / 60 for _, k, steps in rows}
    total = sum(minutes.values())
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {full.threads} threads",
           "torch_compile": full.torch_compile,
           "bf16_autocast": use_bf16(full),  # the recipe's bf16, where this device computes bf16 natively
           **{f"stage{k}_s_per_step": round(v, 3) for k, v in per_step.items()},
           **{f"stage{k}_warmup_s": round(v, 1) for k, v in warm.items()},
           "projected_minutes": {**{f"stage{k}": round(v, 1) for k, v in minutes.items()}, "total": round(total, 1)},
           "peak_rss_gb": round(peak, 2) if peak else None}
    print(json.dumps(res, indent=1))
    print("\n| stage | steps | s/step | warm-up s | projected minutes |\n|---|---:|---:|---:|---:|")
    for label, k, steps in rows:
        if steps:
            print(f"| {label} | {steps} | {per_step[k]:.2f} | {warm[k]:.0f} | {minutes[k]:.1f} |")
    print(f"| total | | | | {total:.1f} |")


if __name__ == "__main__":
    main()
