"""Evaluation during and after training: exact nano-world scores and the intrinsic reward, side by side, so that
reward hacking (a rising reward while correctness stays flat) is visible at once."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import torch

from gvu.config import RewardConfig, SamplingConfig
from gvu.models.adapter import decode_seeds
from gvu.reward import gvu_reward, to_uint8


def world_judgeable(metadata: list[dict]) -> bool:
    from gvu.world.vocab import SHAPES

    return all(r["class"] in SHAPES for m in metadata for r in m.get("include", []))


@torch.no_grad()
def evaluate(backend, metadata: list[dict], images_per_prompt: int, sampling: SamplingConfig,
             reward: RewardConfig, batch: int = 64, progress: bool = False,
             evaluator_workers: int = 0, rank: int = 0, world: int = 1) -> dict:
    """Generate images_per_prompt images per prompt with fixed seeds; score them exactly (nano world) and with
    the GvU reward of `backend` itself. Returns {"per_tag", "overall", "reward", "reward_per_tag", "n"}.
    evaluator_workers > 1 runs the exact evaluator in that many processes (the same verdicts).

    Under torch.distributed every rank calls this with its rank and the world size: rank r generates and scores
    batches r, r + world, r + 2 world, ... of the one-process run (the same rows and seeds in each), the ranks
    exchange their rows, and every rank returns what one process would (gvu.dist.all_gather_objects)."""
    from gvu.dist import all_gather_objects
    from gvu.world.evaluator import evaluate_images

    exact = world_judgeable(metadata)
    rows = [m for m in metadata for _ in range(images_per_prompt)]
    starts = list(range(0, len(rows), batch))[rank::world]
    it = starts
    if progress:
        from tqdm import tqdm
        it = tqdm(starts, desc="evaluate", unit="batch", leave=False)
    done = []  # per batch: (first row, rewards, tags, exact verdicts or None)
    for s in it:
        chunk = rows[s:s + batch]
        texts = [m["prompt"] for m in chunk]
        row_ids = torch.arange(s, s + len(chunk))
        tokens = backend.sample_image_tokens(texts, sampling, row_ids)
        px = backend.decode_images(tokens, texts, decode_seeds(sampling.seed, row_ids))
        r = gvu_reward(backend, px, texts, replace(reward, kind="gvu")).rewards.cpu()
        verdicts = [j.correct for j in evaluate_images(chunk, to_uint8(px), evaluator_workers)] if exact else None
        done.append((s, r, [m.get("tag", "all") for m in chunk], verdicts))
    if world > 1:
        done = sorted((b for part in all_gather_objects(done) for b in part), key=lambda b: b[0])
    correct, by_tag = defaultdict(list), defaultdict(list)
    for _, r, tags, verdicts in done:
        for t, x in zip(tags, r.tolist()):
            by_tag[t].append(x)
        for t, ok in zip(tags, verdicts or ()):
            correct[t].append(ok)
    out = {"reward": float(torch.cat([b[1] for b in done]).mean()), "n": len(rows),
           "reward_per_tag": {t: float(np.mean(v)) for t, v in sorted(by_tag.items())}}
    if exact:
        out["per_tag"] = {t: float(np.mean(v)) for t, v in sorted(correct.items())}
        out["overall"] = float(np.mean(list(out["per_tag"].values())))
    return out


@torch.no_grad()
def sample_over_ranks(backend, prompts: list[str], sampling: SamplingConfig, rank: int = 0,
                      world: int = 1) -> torch.Tensor:
    """Image tokens [M, N] for prompts (row ids 0..M-1) on every rank: rank r samples rows r, r + world, ... and the
    ranks exchange them. One process samples all rows in one call, as sample_image_tokens(prompts, sampling) does;
    under W ranks each row draws what it draws there (its draws depend only on the seed and its row id,
    gvu.sampling.row_uniforms), up to the floating-point order of a smaller batch."""
    from gvu.dist import all_gather_objects

    ids = torch.arange(len(prompts))[rank::world]
    mine = backend.sample_image_tokens([prompts[i] for i in ids.tolist()], sampling, ids) if len(ids) else None
    if world == 1:
        return mine
    parts = [(i, t) for i, t in all_gather_objects((ids, None if mine is None else mine.cpu())) if t is not None]
    tokens = torch.empty(len(prompts), parts[0][1].shape[1], dtype=torch.long)
    for i, t in parts:
        tokens[i] = t
    return tokens.to(backend.device)
