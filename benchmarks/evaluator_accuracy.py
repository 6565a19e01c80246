"""How often is the exact evaluator right? Prints markdown tables (run: python -m benchmarks.evaluator_accuracy).

For each eval-split prompt of both suites (GenEval 553, GenEval++ 280), IMAGES random scenes that satisfy it
are rendered at 64 px, and the evaluator (gvu.world.evaluator: classical image analysis + GenEval's rules) is
compared with the truth:
  (a) clean:     the rendering judged against its own prompt; the truth is "correct".
  (b) mismatch:  the same detections judged against another prompt B; the truth is the symbolic judge
                 (rules.judge_scene(B, the scene's true objects)), which needs no image analysis. Two kinds of B:
                 "other prompt", a different prompt of the same suite and tag, and "near miss", the prompt with
                 one attribute changed (a colour, a count, a relation or region flipped, a size swapped, a class
                 replaced). Reported: correct rejections among the pairs that are truly wrong, and agreement
                 with the symbolic judge over all pairs.
  (c) degraded:  the rendering after gvu.world.degrade's default corruptions (Gaussian blur sigma 0.6, Gaussian
                 noise std 6 on 0..255, JPEG quality 85, then 3 stray 1-pixel specks of random palette colours),
                 judged against its own prompt.
  (d) per tag:   all of the above by suite and tag.
Fixed seeds throughout: the numbers change only when the code does.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import time
from collections import Counter, defaultdict

import numpy as np

from gvu.measure import cpu_name
from gvu.world.degrade import Degradation, degrade
from gvu.world.evaluator import detect
from gvu.world.prompts import MIRROR, make_suite
from gvu.world.rules import judge, judge_scene
from gvu.world.sampler import sample_scene
from gvu.world.scene import render
from gvu.world.vocab import COLOR_NAMES, MAX_COUNT, SHAPES, SUITES

IMAGES = 4  # per prompt, as GenEval samples; (553 + 280) x 4 = 3,332 images
SIZE = 64
FLIP = {"left": "right", "right": "left", "above": "below", "below": "above", "larger": "smaller", "smaller": "larger"}


def near_miss(m: dict, rng: random.Random) -> dict:
    """`m` with one attribute changed, chosen at random among those it has."""
    b = copy.deepcopy(m)
    inc = b["include"]
    edits = [("class", i) for i in range(len(inc))] + [("count", i) for i in range(len(inc))]
    edits += [(k, i) for i, r in enumerate(inc) for k in ("color", "position", "region", "size") if k in r]
    kind, i = rng.choice(edits)
    r = inc[i]
    if kind == "class":
        old = r["class"]
        new = rng.choice([s for s in SHAPES if s not in {q["class"] for q in inc}])
        for q in inc + b.get("exclude", []):
            if q["class"] == old:
                q["class"] = new
    elif kind == "count":
        r["count"] = rng.choice([k for k in range(1, MAX_COUNT + 1) if k != r["count"]])
        for q in b.get("exclude", []):
            if q["class"] == r["class"]:
                q["count"] = r["count"] + 1
    elif kind == "color":
        r["color"] = rng.choice([c for c in COLOR_NAMES if c != r["color"]])
    elif kind == "position":
        r["position"] = [MIRROR[r["position"][0]], r["position"][1]]
    else:  # region or size
        r[kind] = FLIP[r[kind]]
    b["prompt"] = f"{m['prompt']} [near miss: {kind} of include {i}]"
    return b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--specks", type=int, default=Degradation().specks, help="stray specks per degraded image")
    degradation = Degradation(specks=ap.parse_args().specks)
    t0 = time.time()
    rng, nrng = random.Random(0), np.random.default_rng(0)
    stats: dict[tuple[str, str], Counter] = defaultdict(Counter)
    reasons: Counter = Counter()
    for suite in ("geneval", "genevalpp"):
        prompts = make_suite(suite, "eval", seed=0)
        by_tag = defaultdict(list)
        for m in prompts:
            by_tag[m["tag"]].append(m)
        for m in prompts:
            s = stats[(suite, m["tag"])]
            for _ in range(IMAGES):
                scene = sample_scene(m, rng, SIZE)
                img = render(scene)
                dets = detect(img)
                ok = judge(m, dets, SIZE).correct
                s["clean"] += 1
                s["clean_ok"] += ok
                if not ok:
                    reasons[("clean", m["tag"], judge(m, dets, SIZE).reason)] += 1
                others = [b for b in by_tag[m["tag"]] if b["prompt"] != m["prompt"]]
                for kind, b in (("other", rng.choice(others)), ("near", near_miss(m, rng))):
                    truth = judge_scene(b, list(scene.objects), SIZE).correct
                    pred = judge(b, dets, SIZE).correct
                    s[f"{kind}_pairs"] += 1
                    s[f"{kind}_agree"] += truth == pred
                    s[f"{kind}_wrong"] += not truth
                    s[f"{kind}_rejected"] += (not truth) and (not pred)
                    if truth != pred:
                        why = judge(b, dets, SIZE).reason or "evaluator accepts"
                        reasons[(kind, m["tag"], f"{b['prompt']}: {why}")] += 1
                ok = judge(m, detect(degrade(img, nrng, degradation)), SIZE)
                s["degraded"] += 1
                s["degraded_ok"] += ok.correct
                if not ok.correct:
                    reasons[("degraded", m["tag"], ok.reason)] += 1
    wall = time.time() - t0
    report(stats, reasons, wall, degradation)


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.2f}%" if b else "-"


def report(stats: dict, reasons: Counter, wall: float, d: Degradation) -> None:
    tot = Counter()
    for s in stats.values():
        tot.update(s)
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, "
          f"python {platform.python_version()}; wall time {wall:.0f} s")
    print(f"images: {tot['clean']} ({IMAGES} per eval-split prompt, GenEval + GenEval++, {SIZE} px, seed 0); "
          f"degradation: blur sigma {d.blur_sigma}, noise std {d.noise_std}, JPEG q{d.jpeg_quality}, "
          f"{d.specks} specks\n")
    print("| measure | result | target |")
    print("|---|---:|---:|")
    print(f"| (a) clean renderings judged correct | {pct(tot['clean_ok'], tot['clean'])} "
          f"({tot['clean_ok']}/{tot['clean']}) | >= 99.5% |")
    for kind, name in (("other", "other prompt, same tag"), ("near", "near miss, one attribute changed")):
        print(f"| (b) mismatched pairs correctly rejected ({name}) | {pct(tot[kind + '_rejected'], tot[kind + '_wrong'])}"
              f" ({tot[kind + '_rejected']}/{tot[kind + '_wrong']}) | >= 99% |")
        print(f"| (b) agreement with the symbolic judge, all pairs ({name}) | "
              f"{pct(tot[kind + '_agree'], tot[kind + '_pairs'])} ({tot[kind + '_agree']}/{tot[kind + '_pairs']}) | |")
    print(f"| (c) degraded renderings judged correct | {pct(tot['degraded_ok'], tot['degraded'])} "
          f"({tot['degraded_ok']}/{tot['degraded']}) | >= 97% |")
    print("\n(d) per tag\n")
    print("| suite | tag | images | clean | degraded | rejected (other) | rejected (near miss) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for suite, tag in [(suite, t) for suite, tags in SUITES.items() for t in tags if (suite, t) in stats]:
        s = stats[(suite, tag)]
        print(f"| {suite} | {tag} | {s['clean']} | {pct(s['clean_ok'], s['clean'])} | "
              f"{pct(s['degraded_ok'], s['degraded'])} | {pct(s['other_rejected'], s['other_wrong'])} | "
              f"{pct(s['near_rejected'], s['near_wrong'])} |")
    if reasons:
        print("\nmost common failures (kind, tag, reason):")
        for (kind, tag, why), n in reasons.most_common(8):
            print(f"  {n:4d}  {kind:8s} {tag:24s} {why}")


if __name__ == "__main__":
    main()
