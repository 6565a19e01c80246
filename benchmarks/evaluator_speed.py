"""Time the exact evaluator's detect() with and without its template cache, and check they detect the same.

The images: --images eval-split scenes of both suites (GenEval and GenEval++, seed 0, 64 px), clean renderings and
the same renderings degraded as benchmarks/evaluator_accuracy.py degrades them. "Without" calls the uncached
template function (gvu.world.evaluator._templates.__wrapped__), the code path before the cache; each setting starts
from an empty cache, so the cached row includes filling it.

Usage: python -m benchmarks.evaluator_speed [--images 600] [--rounds 3]   (about a minute on the 2-core CPU)
Run it alone: it times a single process.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time

import numpy as np

from gvu.measure import cpu_name
from gvu.world import evaluator
from gvu.world.degrade import degrade
from gvu.world.prompts import make_suite
from gvu.world.sampler import sample_scene
from gvu.world.scene import render


def images(n: int) -> dict[str, list]:
    rng, nrng = random.Random(0), np.random.default_rng(0)
    prompts = make_suite("geneval", "eval", seed=0) + make_suite("genevalpp", "eval", seed=0)
    clean = [render(sample_scene(rng.choice(prompts), rng, 64)) for _ in range(n)]
    return {"clean": [np.asarray(im) for im in clean], "degraded": [np.asarray(degrade(im, nrng)) for im in clean]}


def timed(imgs: list) -> tuple[float, list]:
    t0 = time.perf_counter()
    out = [evaluator.detect(a) for a in imgs]
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    cached = evaluator._templates
    sets = images(args.images)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, python {platform.python_version()}; {args.images} images a set, "
          f"{args.rounds} rounds; ms per image (median of rounds)\n")
    print("| images | without cache | with cache | speed-up | cache hits (one pass) | same detections |")
    print("|---|---:|---:|---:|---:|---|")
    for name, imgs in sets.items():
        times = {"without": [], "with": []}
        same = True
        for r in range(args.rounds):
            dets = {}
            for setting in (("without", "with") if r % 2 == 0 else ("with", "without")):
                cached.cache_clear()
                evaluator._templates = cached.__wrapped__ if setting == "without" else cached
                try:
                    t, dets[setting] = timed(imgs)
                finally:
                    evaluator._templates = cached
                times[setting].append(t)
                if setting == "with":
                    info = cached.cache_info()
            same &= dets["with"] == dets["without"]
        a, b = (1000 * float(np.median(times[k])) / len(imgs) for k in ("without", "with"))
        hits = f"{info.hits / max(info.hits + info.misses, 1):.0%} of {info.hits + info.misses}"
        print(f"| {name} | {a:.2f} | {b:.2f} | {a / b:.2f}x | {hits} | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
