"""Stage 2's step time with and without encoding each distinct image once (rows that share an image, such as a
ranking group's captions, run the vision encoder once: gvu.models.janus.text_logits with image_index).

Runs short stage-2 runs of the preset from fresh weights, alternating the two settings (--rounds of each, order
swapped every round), and prints the seconds per step between logged steps 20 and 40 of each run, and the medians.
"Without" gives every row its own copy of its image, the code path before the change; the math is the same.

Usage: python -m benchmarks.stage2_image_sharing [--preset nano] [--rounds 4]
About 8 minutes on the 2-core CPU with the default 4 rounds; run it alone (timings).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace

import numpy as np
import torch

import gvu.models.janus as janus
import gvu.models.pretrain as pretrain
from gvu.models.stage_timing import new_run, scratch_setup, stage_times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    full = pretrain.PRESETS[args.preset]
    torch.set_num_threads(full.threads)
    shared_path = janus.text_logits

    def per_row(model, batch, pixel_values, image_index=None):  # every row its own copy: the old path
        return shared_path(model, batch, pixel_values if image_index is None else pixel_values[image_index])

    times = {"shared": [], "per_row": []}
    with tempfile.TemporaryDirectory() as out:
        short, spec, tok, config, vq, vision = scratch_setup(out, full)
        try:
            for r in range(args.rounds):
                for mode in (("shared", "per_row") if r % 2 == 0 else ("per_row", "shared")):
                    janus.text_logits = shared_path if mode == "shared" else per_row
                    run = new_run(out, f"{mode}{r}")
                    pretrain.stage2(replace(short, lm_steps=42), run, spec, tok, config, vq, vision)
                    logged = stage_times(run, 2)
                    times[mode].append((logged[1] - logged[0]) / 20)  # logged every 20 steps
                    print(f"round {r} {mode}: {times[mode][-1]:.3f} s a step", flush=True)
        finally:
            janus.text_logits = shared_path
    s, p = np.median(times["shared"]), np.median(times["per_row"])
    print(f"\n| stage-2 step ({args.preset}, {full.threads} threads) | s/step, median of {args.rounds} |\n|---|---:|")
    print(f"| each distinct image encoded once | {s:.3f} |\n| every row its own copy | {p:.3f} |")
    print(f"| change | {100 * (s / p - 1):+.1f}% |")


if __name__ == "__main__":
    main()
