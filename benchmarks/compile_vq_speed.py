"""Stages 1 and 1c (the VQ) with and without torch.compile (PretrainConfig.compile_vq), on this machine.

Runs short stage-1 and stage-1c runs of the preset from fresh weights, alternating the two settings (--rounds of each,
order swapped every round), and prints the seconds per step between logged steps 20 and --steps of each run (the
compiled runs' first steps, which compile, fall before that), the medians, and the one-off compile time (the first
20 steps' extra time). Usage: python benchmarks/compile_vq_speed.py [--preset nano] [--rounds 2] [--steps 60]
About 6 minutes on the 2-core CPU with the defaults (more when inductor's cache is cold); run it alone (timings).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import replace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import gvu.models.pretrain as pretrain  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60, help="steps per run, a multiple of 20 and at least 40")
    args = ap.parse_args()
    if args.steps < 40 or args.steps % 20:
        ap.error("--steps must be a multiple of 20, at least 40 (the log has a time every 20 steps)")
    full = pretrain.PRESETS[args.preset]
    torch.set_num_threads(full.threads)
    per_step = {(st, c): [] for st in ("1", "1c") for c in (False, True)}
    first = {(st, c): [] for st in ("1", "1c") for c in (False, True)}
    with tempfile.TemporaryDirectory() as out:
        short = replace(full, vq_steps=args.steps, dec_steps=args.steps, save_every=10**9)
        spec, tok, config = pretrain.stage0(short, out)
        logged = []
        log = pretrain.log
        pretrain.log = lambda o, rec: (logged.append((rec["step"], rec["time"])), log(o, rec))
        try:
            for r in range(args.rounds):
                for c in ((False, True) if r % 2 == 0 else (True, False)):
                    cfg = replace(short, compile_vq=c)
                    run = os.path.join(out, f"c{int(c)}r{r}")
                    os.makedirs(run)
                    shutil.copy(os.path.join(out, "config.json"), run)
                    for name, fn in (("1", lambda: pretrain.stage1(cfg, run, config)),
                                     ("1c", lambda: pretrain.stage_decoder(cfg, run, config, vq))):
                        logged.clear()
                        vq = fn()
                        t = dict(logged)
                        per_step[name, c].append((t[args.steps] - t[20]) / (args.steps - 20))
                        first[name, c].append(t[20])
                    print(f"round {r} compile_vq={c}: stage 1 {per_step['1', c][-1]:.3f}, stage 1c "
                          f"{per_step['1c', c][-1]:.3f} s a step", flush=True)
        finally:
            pretrain.log = log
    med = {k: float(np.median(v)) for k, v in per_step.items()}
    extra = {st: float(np.median(first[st, True])) - 20 * med[st, True] for st in ("1", "1c")}
    print(f"\n| {args.preset}, {full.threads} threads, s/step (median of {args.rounds}) | stage 1 | stage 1c |")
    print("|---|---:|---:|")
    for c in (False, True):
        print(f"| compile_vq={c} | {med['1', c]:.3f} | {med['1c', c]:.3f} |")
    print(f"| change | {100 * (med['1', True] / med['1', False] - 1):+.1f}% | "
          f"{100 * (med['1c', True] / med['1c', False] - 1):+.1f}% |")
    print(f"| compile time, once per stage (s) | {extra['1']:.0f} | {extra['1c']:.0f} |")


if __name__ == "__main__":
    main()
