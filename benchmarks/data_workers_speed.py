"""Stage 2's and stage 3's step time on the CPU with their batches made inline (data_workers=0) or ahead of time in
one worker process (data_workers=1). The batches are the same either way (Stage2Data.step seeds each step); only
where the rendering and tokenizing run changes.

Runs short stage-2 and stage-3 runs of the preset from fresh weights, alternating the two settings (--rounds of each,
order swapped every round), and prints the seconds per step between logged steps 20 and 40 of each run, and the
medians. Usage: python -m benchmarks.data_workers_speed [--preset nano] [--rounds 3]
About 12 minutes on the 2-core CPU with 3 rounds; run it alone (timings).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace

import numpy as np
import torch

import gvu.models.pretrain as pretrain
from gvu.models.stage_timing import new_run, scratch_setup, stage_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    full = pretrain.PRESETS[args.preset]
    torch.set_num_threads(full.threads)
    times = {(stage, w): [] for stage in ("2", "3") for w in (0, 1)}
    with tempfile.TemporaryDirectory() as out:
        short, spec, tok, config, vq, vision = scratch_setup(out, full, lm_steps=42, s3_steps=42)
        for r in range(args.rounds):
            for w in ((0, 1) if r % 2 == 0 else (1, 0)):
                cfg = replace(short, data_workers=w)
                run = new_run(out, f"w{w}r{r}")
                model = pretrain.stage2(cfg, run, spec, tok, config, vq, vision)
                logged = stage_times(run, 2)
                times["2", w].append((logged[1] - logged[0]) / 20)  # logged every 20 steps
                pretrain.stage3(cfg, run, spec, tok, model)
                logged = stage_times(run, 3)
                times["3", w].append((logged[1] - logged[0]) / 20)
                print(f"round {r} data_workers={w}: stage 2 {times['2', w][-1]:.3f}, stage 3 "
                      f"{times['3', w][-1]:.3f} s a step", flush=True)
    print(f"\n| {args.preset}, {full.threads} threads, s/step (median of {args.rounds}) | stage 2 | stage 3 |")
    print("|---|---:|---:|")
    med = {k: float(np.median(v)) for k, v in times.items()}
    for w in (0, 1):
        print(f"| data_workers={w} | {med['2', w]:.3f} | {med['3', w]:.3f} |")
    print(f"| change | {100 * (med['2', 1] / med['2', 0] - 1):+.1f}% | {100 * (med['3', 1] / med['3', 0] - 1):+.1f}% |")


if __name__ == "__main__":
    main()
