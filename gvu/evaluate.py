"""Evaluation during and after training: exact nano-world scores and the intrinsic reward, side by side
(JANUS-NOTES: a rising reward with flat correctness is reward hacking, and must be visible at once)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import torch

from gvu.config import RewardConfig, SamplingConfig
from gvu.reward import gvu_reward, to_uint8


def world_judgeable(metadata: list[dict]) -> bool:
    from gvu.world.vocab import SHAPES

    return all(r["class"] in SHAPES for m in metadata for r in m.get("include", []))


@torch.no_grad()
def evaluate(backend, metadata: list[dict], images_per_prompt: int, sampling: SamplingConfig,
             reward: RewardConfig, batch: int = 64, keep_images: int = 0, progress: bool = False,
             evaluator_workers: int = 0) -> dict:
    """Generate images_per_prompt images per prompt with fixed seeds; score them exactly (nano world) and with
    the GvU reward of `backend` itself. Returns {"per_tag", "overall", "reward", "reward_per_tag", "n", "images"?}.
    evaluator_workers > 1 runs the exact evaluator in that many processes (the same verdicts)."""
    from gvu.world.evaluator import evaluate_images

    exact = world_judgeable(metadata)
    rows = [m for m in metadata for _ in range(images_per_prompt)]
    correct, rewards, by_tag, kept = defaultdict(list), [], defaultdict(list), []
    it = range(0, len(rows), batch)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="evaluate", unit="batch", leave=False)
    for s in it:
        chunk = rows[s:s + batch]
        texts = [m["prompt"] for m in chunk]
        tokens = backend.sample_image_tokens(texts, sampling, torch.arange(s, s + len(chunk)))
        px = backend.decode_images(tokens)
        r = gvu_reward(backend, px, texts, replace(reward, kind="gvu")).rewards
        rewards.append(r)
        for m, x in zip(chunk, r.tolist()):
            by_tag[m.get("tag", "all")].append(x)
        if exact:
            for m, j in zip(chunk, evaluate_images(chunk, to_uint8(px), evaluator_workers)):
                correct[m.get("tag", "all")].append(j.correct)
        if len(kept) < keep_images:
            kept.extend(to_uint8(px)[: keep_images - len(kept)])
    out = {"reward": float(torch.cat(rewards).mean()), "n": len(rows),
           "reward_per_tag": {t: float(np.mean(v)) for t, v in sorted(by_tag.items())}}
    if exact:
        out["per_tag"] = {t: float(np.mean(v)) for t, v in sorted(correct.items())}
        out["overall"] = float(np.mean(list(out["per_tag"].values())))
    if keep_images:
        out["images"] = kept
    return out
