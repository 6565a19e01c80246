"""Throughput of the batched GvU reward against the slow reference (the official algorithm, literally), and of
our KV-cached rollout against transformers' own `generate(generation_mode="image")`, on the same model, inputs
and settings (and ours without guidance, which transformers cannot do: the conditional rows only). Prints markdown
tables.

Usage: python -m benchmarks.reward_speed [--model models/nano-janus] [--prompts 8] [--group 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from gvu.config import RewardConfig, SamplingConfig
from gvu.models.janus import JanusBackend
from gvu.reward import gvu_reward
from gvu.reward_reference import reference_reward
from gvu.world.prompts import make_suite


def timed(fn, repeat=1, warmup=True):
    if warmup:
        fn()
    t = time.perf_counter()
    for _ in range(repeat):
        out = fn()
    return (time.perf_counter() - t) / repeat, out


def hf_generate(b: JanusBackend, prompts: list[str], scale: float):
    """transformers' own image generation with the same prompts (left-padded like ours) and guidance."""
    batch = b.prompt_batch(prompts)
    gc = b.model.generation_config
    gc.bos_token_id, gc.pad_token_id = b.ids["bos"], b.ids["pad"]
    gc.generation_kwargs = {"boi_token_id": b.ids["boi"]}
    return b.model.generate(inputs=batch.ids, attention_mask=batch.mask, generation_mode="image", do_sample=True,
                            guidance_scale=scale, max_new_tokens=b.num_image_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--prompts", type=int, default=8, help="B")
    ap.add_argument("--group", type=int, default=8, help="G")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="alternating timings of each sampler (median reported)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = JanusBackend.from_pretrained(args.model)
    md = make_suite("geneval", "eval", seed=0)[: args.prompts]
    rows = [m["prompt"] for m in md for _ in range(args.group)]
    m = len(rows)
    scale = b.default_cfg_scale

    # alternate the samplers and take medians, so that a busy machine slows all alike
    ours, hf, off = [], [], []
    for _ in range(args.repeats):
        t, tokens = timed(lambda: b.sample_image_tokens(rows, SamplingConfig(seed=0)), warmup=not ours)
        ours.append(t)
        hf.append(timed(lambda: hf_generate(b, rows, scale), warmup=not hf)[0])
        off.append(timed(lambda: b.sample_image_tokens(rows, SamplingConfig(guidance=False, seed=0)), warmup=not off)[0])
    t_ours, t_hf, t_off = float(np.median(ours)), float(np.median(hf)), float(np.median(off))
    pixels = b.decode_images(tokens)
    t_fast, fast = timed(lambda: gvu_reward(b, pixels, rows, RewardConfig()), repeat=3)
    t0 = time.perf_counter()
    slow = reference_reward(b, pixels, RewardConfig().query, rows)
    t_slow = time.perf_counter() - t0
    diff = float((fast.rewards.double() - slow).abs().max())

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads; "
          f"model {args.model}; B={args.prompts}, G={args.group} ({m} images), cfg {scale}, {b.num_image_tokens} tokens/image\n")
    print(f"| rollout (sample image tokens), median of {args.repeats} | seconds | images/s |\n|---|---:|---:|")
    print(f"| gvu JanusBackend.sample_image_tokens | {t_ours:.2f} | {m / t_ours:.1f} |")
    print(f"| transformers generate(generation_mode='image') | {t_hf:.2f} | {m / t_hf:.1f} |")
    print(f"| ratio (ours / transformers) | | {t_hf / t_ours:.2f}x |")
    print(f"| gvu sample_image_tokens without guidance (conditional rows only) | {t_off:.2f} | {m / t_off:.1f} |\n")
    print("| GvU reward | seconds | images/s |\n|---|---:|---:|")
    print(f"| batched, one teacher-forced pass, log space | {t_fast:.3f} | {m / t_fast:.1f} |")
    print(f"| slow reference (one image, one pass per token) | {t_slow:.2f} | {m / t_slow:.2f} |")
    print(f"| speed-up | | {t_slow / t_fast:.1f}x |\n")
    print(f"max |batched - reference| reward difference: {diff:.2e}")


if __name__ == "__main__":
    main()
