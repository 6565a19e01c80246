"""Which eval-split prompt texts did a nano-Janus read as training captions, and does it choose them better?

Plain understanding rows answer the reward's query with a caption of the scene; a "geneval"-style caption is a
GenEval / GenEval++ prompt that is true of the scene, built from it (gvu.world.captions.true_prompt). Unless the
recipe sets caption_train_only, nothing keeps such a caption off the eval split or the held-out relations, while
every other training row (generation, spatial, ranking) takes train-split prompts only.

Two measurements:

  replay   The recipe's stage-2 and stage-3 understanding data made again from its saved pretrain_config.json (the
           same seeds, with rendering skipped: it draws nothing from the data's random stream), counting every
           answer text. Reported: rows, rows whose answer is an eval-split prompt text of either suite (tags that
           hold prompts out; the small tags share theirs by design) or a held-out (ood) one, and how many distinct
           prompts of the understanding benchmark's eval suite were read as captions.
  choice   With --model: caption choice (true prompt among 4 minimal edits, by log p(prompt | image), as
           benchmarks/nano_model_eval.py --only understanding computes it, same scenes and edits) for each eval
           prompt, split by whether its text was a training caption. A leak that helps shows up as higher accuracy
           on the prompts read in training than on those never read, within a tag.

Usage: python -m experiments.caption_leak [--model models/nano-janus] [--config DIR/pretrain_config.json]
       [--scene-seed 99] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import fields

import numpy as np
import torch
from tqdm import tqdm

from gvu.models.pretrain import PretrainConfig, Stage2Data
from gvu.world.prompts import make_suite, split_of


def load_config(path: str) -> PretrainConfig:
    """A saved pretrain_config.json; fields added after it was written keep their defaults (off in every preset)."""
    with open(path) as f:
        saved = json.load(f)
    known = {f.name for f in fields(PretrainConfig)}
    return PretrainConfig(**{k: v for k, v in saved.items() if k in known})


def replay(cfg: PretrainConfig, tokenizer, spec, limit: int | None = None) -> tuple[Counter, dict[str, str]]:
    """(every understanding answer text of stages 2 and 3 (plain, spatial and ranking rows) with its count,
    {text: split} of every prompt a geneval-style caption was built as). limit: the first `limit` steps of each stage."""
    from gvu.world import captions

    seen: Counter = Counter()
    made: dict[str, str] = {}
    true_prompt = captions.true_prompt

    def recording(scene, suite, tag, rng):
        m = true_prompt(scene, suite, tag, rng)
        if m is not None:
            made[m["prompt"]] = split_of(m, suite)
        return m

    from gvu.models.pretrain import data as stage_data

    render, to_pixels = stage_data.render, stage_data.to_pixels
    stage_data.render, stage_data.to_pixels = (lambda scene: None), (lambda images: None)  # no pixels: same draws
    captions.true_prompt = recording
    try:
        for steps, base, recon in ((cfg.lm_steps, 3, 0.0), (cfg.s3_steps, 7, cfg.und_recon)):
            data = Stage2Data(tokenizer, spec, cfg, random.Random(), recon=recon, seed_base=base)
            for k in tqdm(range(min(steps, limit or steps)), desc=f"replay (seed base {base})"):
                data.reseed(k)  # as Stage2Data.step
                data.generation()
                seqs, lens, _ = data.understanding()
                if cfg.rank_images:
                    r_seqs, r_lens, _, _ = data.ranking()
                    seqs, lens = seqs + r_seqs, lens + r_lens
                for seq, n in zip(seqs, lens):
                    seen[tokenizer.decode(seq[-n:-1]).strip()] += 1  # the answer without its end token
    finally:
        stage_data.render, stage_data.to_pixels = render, to_pixels
        captions.true_prompt = true_prompt
    return seen, made


def choice(model: str, seen: Counter, seed: int) -> dict:
    """Caption choice per eval prompt (benchmarks.nano_model_eval's own, at scene seed `seed`), split by whether
    the prompt's text was read in training."""
    from gvu.models.janus import JanusBackend
    from gvu.nano_eval import EDIT_SEED, bench_understanding, eval_scenes

    per_prompt: list = []
    bench_understanding(JanusBackend.from_pretrained(model), eval_scenes(None, seed), EDIT_SEED, per_prompt=per_prompt)
    hits: dict = defaultdict(list)
    for m, right in per_prompt:
        shared = split_of(m, "geneval") != "eval"  # a small tag's prompts are train prompts too, by design
        hits[(m["tag"], "shared with train" if shared else "read" if seen[m["prompt"]] else "never read")].append(right)
        hits[("all", "pooled over prompts")].append(right)
    return {f"{tag} / {read}": {"n": len(v), "accuracy": float(np.mean(v))} for (tag, read), v in sorted(hits.items())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="also measure caption choice on this model directory")
    ap.add_argument("--config", default="models/nano-janus/pretrain_config.json",
                    help="the recipe to replay (a run's or model's pretrain_config.json)")
    ap.add_argument("--scene-seed", type=int, default=99)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="replay only the first N steps of each stage (a quick look)")
    ap.add_argument("--out", default="runs/caption_leak")
    args = ap.parse_args()
    if not os.path.isfile(args.config):
        sys.exit(f"--config {args.config}: no such file; give a pretrain_config.json (a model's or a run's)")
    if args.model and not os.path.isfile(os.path.join(args.model, "config.json")):
        sys.exit(f"--model {args.model}: not a model directory (no config.json)")
    torch.set_num_threads(args.threads)
    from transformers import AutoTokenizer

    from gvu.models import nano

    t0 = time.time()
    cfg = load_config(args.config)
    tok_dir = args.model or os.path.dirname(args.config)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    seen, made = replay(cfg, tokenizer, nano.SPECS[cfg.spec], args.limit)
    rows = sum(seen.values())
    # the benchmark's eval prompts of tags that hold prompts out (the small tags share theirs with train by design)
    split_bench = {m["prompt"]: m["tag"] for m in make_suite("geneval", "eval", seed=0)
                   if split_of(m, "geneval") == "eval"}
    result = {
        "config": args.config, "limit": args.limit, "caption_train_only": cfg.caption_train_only, "rows": rows,
        "rows_with_an_eval_prompt_text": sum(n for t, n in seen.items() if made.get(t) == "eval"),
        "rows_with_a_held_out_prompt_text": sum(n for t, n in seen.items() if made.get(t) == "ood"),
        "distinct_eval_prompt_texts_read": sum(1 for t in seen if made.get(t) == "eval"),
        "benchmark_eval_prompts_that_hold_out_texts": len(split_bench),
        "of_them_read_in_training": sum(1 for p in split_bench if seen[p]),
        "read_by_tag": {tag: {"read": sum(1 for p, t in split_bench.items() if t == tag and seen[p]),
                              "of": sum(1 for t in split_bench.values() if t == tag),
                              "rows_read": sum(seen[p] for p, t in split_bench.items() if t == tag)}
                        for tag in sorted(set(split_bench.values()))},
    }
    if args.model:
        result["caption_choice"] = choice(args.model, seen, args.scene_seed)
        result["scene_seed"] = args.scene_seed
    result["seconds"] = round(time.time() - t0, 1)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
