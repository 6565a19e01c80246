"""Measure a nano-Janus checkpoint against issue 3's targets; prints markdown tables and writes JSON.

  vq             exact-evaluator accuracy on VQ reconstructions of eval-split renderings (target >= 98%); with
                 --held-out-colours also apart for scenes with and without an object of a held-out colour-shape
                 pair (see gvu.nano_eval.eval_scenes)
  understanding  choose the true prompt among 4 (3 minimal edits: colour, count, shape or relation) by the
                 model's log p(prompt | image, "Describe the image in detail."), summed and length-normalised
                 (target >= 90%); the summed choice also apart for scenes with and without a held-out pair
  understanding_recon
                 the same choice on VQ reconstructions of the renderings (encode -> decode: the decoder that makes
                 generated images, so these are the pixels the reward's judge sees)
  qa             question answering, the answer chosen by likelihood among its type's answers, per type, beside
                 the share of that type's questions whose answer is the commonest one (what a model that ignores
                 the image and the question's words scores by always giving it)
  generation     nano-GenEval on the eval split: 4 images per prompt, fixed seeds, default sampling (0.25-0.65)
  features       how far apart the vision encoder puts objects differing only in shape, position or colour
  groups         of groups of 8 images per prompt (train split), how many hold both right and wrong images

Usage: python -m benchmarks.nano_model_eval [--model models/nano-janus] [--only vq,understanding,...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import time
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

from gvu.config import SamplingConfig
from gvu.measure import summarise
from gvu.models.janus import JanusBackend
from gvu.models.pretrain import to_pixels
from gvu.nano_eval import EDIT_SEED, bench_understanding, bench_vq, eval_scenes, score_texts
from gvu.reward import to_uint8
from gvu.world.captions import QUESTION_TYPES, questions
from gvu.world.evaluator import evaluate_image
from gvu.world.prompts import make_suite
from gvu.world.scene import render
from gvu.world.vocab import COLOR_NAMES, NUMBER_WORDS, SHAPES, SIZES

ANSWERS = {"count": ["zero"] + [NUMBER_WORDS[k] for k in range(1, 7)], "color": list(COLOR_NAMES), "shape": list(SHAPES),
           "size": list(SIZES), "relation": ["yes", "no"], "exists": ["yes", "no"]}


@torch.no_grad()
def bench_qa(b, pairs, seed: int) -> dict:
    rng = random.Random(seed)
    hits, answers = defaultdict(list), defaultdict(list)
    for m, sc in tqdm(pairs, desc="qa"):
        for qtype, q, a in questions(sc, rng, 2):
            cands = ANSWERS[qtype]
            px = to_pixels([render(sc)]).repeat(len(cands), 1, 1, 1)
            total, _ = score_texts(b, px, q, cands)
            hits[qtype].append(cands[int(total.argmax())] == a)
            answers[qtype].append(a)
    return {t: {"accuracy": float(np.mean(hits[t])), "n": len(hits[t]),
                "commonest_answer_share": majority_share(answers[t])} for t in QUESTION_TYPES if hits[t]}


def majority_share(answers: list[str]) -> float:
    """The share of the commonest answer: the accuracy of always giving it."""
    return max(answers.count(a) for a in set(answers)) / len(answers)


def sample_and_judge(b, prompts_md, per_prompt: int, sampling: SamplingConfig, batch: int = 64):
    rows = [m for m in prompts_md for _ in range(per_prompt)]
    verdicts = []
    for s in tqdm(range(0, len(rows), batch), desc="generation"):
        chunk = rows[s:s + batch]
        tok = b.sample_image_tokens([m["prompt"] for m in chunk], SamplingConfig(**{**sampling.__dict__, "seed": sampling.seed + s}))
        for m, img in zip(chunk, to_uint8(b.decode_images(tok))):
            verdicts.append(evaluate_image(m, img).correct)
    return rows, verdicts


def bench_generation(b, n_prompts, sampling) -> dict:
    md = make_suite("geneval", "eval", seed=0)[:n_prompts]
    rows, verdicts = sample_and_judge(b, md, 4, sampling)
    correct = defaultdict(list)
    for m, v in zip(rows, verdicts):
        correct[m["tag"]].append(v)
    return summarise(correct)


def bench_groups(b, n_prompts, sampling) -> dict:
    md = make_suite("geneval", "train", n_prompts, seed=1)
    rows, verdicts = sample_and_judge(b, md, 8, sampling)
    v = np.array(verdicts).reshape(len(md), 8)
    mixed = (v.any(1) & ~v.all(1))
    per_tag = defaultdict(list)
    for m, x in zip(md, mixed):
        per_tag[m["tag"]].append(bool(x))
    return {"mixed_fraction": float(mixed.mean()), "all_wrong": float((~v.any(1)).mean()),
            "all_right": float(v.all(1).mean()), "per_tag_mixed": {t: float(np.mean(x)) for t, x in per_tag.items()}}


@torch.no_grad()
def bench_features(b) -> dict:
    """How far apart the vision encoder puts single large objects that differ only in shape, position or colour
    (mean pairwise cosine distance of the aligned features), next to the same distances in pixel space."""
    from gvu.world.scene import Obj, Scene
    from gvu.world.vocab import SHAPES

    sets = {"shape": [Scene((Obj(s, "red", "large", 32, 32),)) for s in SHAPES],
            "position": [Scene((Obj("circle", "red", "large", x, y),)) for x, y in ((16, 16), (48, 16), (16, 48), (48, 48))],
            "colour": [Scene((Obj("circle", c, "large", 32, 32),)) for c in ("red", "blue", "green", "yellow")]}

    def mean_distance(vecs):
        v = torch.nn.functional.normalize(torch.stack(vecs), dim=1)
        sim = v @ v.T
        n = len(vecs)
        return float((1 - sim)[~torch.eye(n, dtype=torch.bool)].mean())

    out = {}
    for name, scenes in sets.items():
        px = to_pixels([render(sc) for sc in scenes])
        feats = b.model.model.get_image_features(b.pixel_values(px)).pooler_output.flatten(1).float()
        out[name] = {"features": round(mean_distance(list(feats)), 4), "pixels": round(mean_distance(list(px.flatten(1))), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--only", default="vq,understanding,qa,features,generation,groups")
    ap.add_argument("--prompts", type=int, default=None, help="eval prompts to use (default: all 553)")
    ap.add_argument("--group-prompts", type=int, default=64)
    ap.add_argument("--cfg-scale", type=float, default=None)
    ap.add_argument("--held-out-colours", action="store_true",
                    help="draw the colours an eval prompt leaves open from all colours, held-out pairs included, as "
                         "older scores in the docs did (scores then report scenes with and without them apart)")
    ap.add_argument("--scene-seed", type=int, default=99,
                    help="seed of the eval prompts' renderings (vq, understanding, qa); the card's scores use 99, and "
                         "other seeds draw other scenes for the same prompts (a second sample of a close score)")
    ap.add_argument("--out", default=None, help="write results.json here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (scores match within sampling noise, not bit for bit)")
    args = ap.parse_args()
    benches = {  # name -> run(backend, eval scene pairs, sampling)
        "vq": lambda b, pairs, sampling: bench_vq(b, pairs),
        "understanding": lambda b, pairs, sampling: bench_understanding(b, pairs, seed=EDIT_SEED),
        "understanding_recon": lambda b, pairs, sampling: bench_understanding(b, pairs, seed=EDIT_SEED, recon=True),
        "qa": lambda b, pairs, sampling: bench_qa(b, pairs, seed=6),
        "generation": lambda b, pairs, sampling: bench_generation(b, args.prompts, sampling),
        "features": lambda b, pairs, sampling: bench_features(b),
        "groups": lambda b, pairs, sampling: bench_groups(b, args.group_prompts, sampling),
    }
    unknown = [n for n in args.only.split(",") if n not in benches]
    if unknown:  # before the model loads and the first benchmark runs
        ap.error(f"--only: unknown benchmarks {unknown}; choose from {', '.join(benches)}")
    torch.set_num_threads(args.threads)
    b = JanusBackend.from_pretrained(args.model, device=args.device)
    sampling = SamplingConfig(cfg_scale=args.cfg_scale, seed=1234)
    pairs = eval_scenes(args.prompts, seed=args.scene_seed, held_out_colours=args.held_out_colours)
    results, t0 = {}, time.time()
    for name in args.only.split(","):
        t = time.time()
        results[name] = benches[name](b, pairs, sampling)
        results[name]["seconds"] = round(time.time() - t, 1)
    results["machine"] = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, torch {torch.__version__}"
    results["settings"] = {"model": args.model, "prompts": args.prompts, "cfg_scale": sampling.cfg_scale or b.default_cfg_scale,
                           "threads": args.threads, "device": args.device, "scene_seed": args.scene_seed,
                           "held_out_colours": args.held_out_colours, "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(results, indent=1))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
