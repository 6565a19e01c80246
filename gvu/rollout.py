"""Group rollout: G images for each of B prompts, batched across prompts, decoded to pixels (and scored).

Global rows are grouped: rows b*G .. b*G + G - 1 belong to prompt b. Under torch.distributed each rank holds the
rows rank, rank + W, ... (gvu.dist.rank_slice); a row's images depend only on (seed, global row id), so one process
and W ranks sample the same images, and so does any micro-batch size. Everything the loss needs travels in the
typed Rollout record.

Memory: rows are sampled, decoded and (given a scorer) scored one micro-batch at a time, and a scored micro-batch's
pixels are dropped, so memory grows with the micro-batch, not with B x G. The default micro-batch is sized from the
model (its rollout_bytes_per_row) and the device's free memory: MEMORY_FRACTION of it, clamped to [1, rows].
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch

from gvu.config import SamplingConfig
from gvu.models.adapter import UnifiedModel, decode_seeds
from gvu.reward import RewardOutput, concat_rewards

MEMORY_FRACTION = 0.25  # of the free memory, for one micro-batch's rows: the rest is the reward's, the update's and the allocator's

# rollout's scorer: (pixels [m, 3, H, W] in [-1, 1], the m rows' metadata) -> RewardOutput with rewards [m]
Scorer = Callable[[torch.Tensor, list[dict]], RewardOutput]


@dataclass
class Rollout:
    metadata: list[dict]  # B prompts in GenEval format (their "prompt" field is the text)
    group_size: int  # G
    row_ids: torch.Tensor  # [M] long, the global row ids this process holds (all B*G rows on one process)
    tokens: torch.Tensor  # [M, N] long, sampled image tokens
    pixels: torch.Tensor | None  # [M, 3, H, W] float in [-1, 1], the decoded images; None when a scorer read them
    old_logprobs: torch.Tensor | None = None  # [M, N] conditional-branch log p at sampling time (GRPO's pi_old)
    rewards: RewardOutput | None = None  # the scorer's output for the M rows, in row order (None without a scorer)
    micro_batch: int = 0  # rows sampled, decoded and scored per call

    @property
    def prompts(self) -> list[str]:
        """B prompt texts."""
        return [m["prompt"] for m in self.metadata]

    @property
    def row_metadata(self) -> list[dict]:
        """M metadata dicts, one per image row held here."""
        return [self.metadata[int(r) // self.group_size] for r in self.row_ids]

    @property
    def row_prompts(self) -> list[str]:
        """M prompt texts, one per image row held here."""
        return [m["prompt"] for m in self.row_metadata]


def check_group_size(group_size: int) -> None:
    if group_size < 2:
        raise ValueError(f"group size G must be >= 2 (got {group_size}): GRPO's advantages compare images of one prompt")


def mem_available_bytes(meminfo: str) -> int | None:
    """MemAvailable from the text of /proc/meminfo ("MemAvailable:  8000 kB") in bytes; None if absent."""
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def free_memory_bytes(device: torch.device | str) -> int:
    """Free memory where the rollout runs: CUDA's free device memory (torch.cuda.mem_get_info), else the host's
    available RAM (MemAvailable, which counts reclaimable page cache; else the free pages)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            available = mem_available_bytes(f.read())
    except OSError:
        available = None
    return available if available is not None else os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def micro_batch_for(bytes_per_row: int, free_bytes: int, rows: int, fraction: float = MEMORY_FRACTION) -> int:
    """Rows per micro-batch: fraction x free_bytes // bytes_per_row, clamped to [1, rows]."""
    fit = int(free_bytes * fraction) // max(1, int(bytes_per_row))
    return max(1, min(rows, fit))


def default_micro_batch(model: UnifiedModel, sampling: SamplingConfig, prompts: list[str], rows: int) -> int:
    """The micro-batch for `rows` rows whose longest prompt is among `prompts`, sized from the model and the
    memory free now on its device."""
    return micro_batch_for(model.rollout_bytes_per_row(sampling, prompts), free_memory_bytes(model.device), rows)


def rollout(model: UnifiedModel, metadata: list[dict], group_size: int, sampling: SamplingConfig,
            with_old_logprobs: bool = False, micro_batch: int | None = None, rank: int = 0, world: int = 1,
            old_logprobs_guidance: float | None = None, score: Scorer | None = None) -> Rollout:
    """Sample G images per prompt (this rank's rows) and decode them. Reproducible from sampling.seed.

    micro_batch: rows sampled, decoded and scored per call (memory bound); None sizes it from the model and the
    free memory (default_micro_batch). The rows' images do not depend on it.
    old_logprobs_guidance: the guidance of the old log-probs (None: the conditional branch; see loss_logprobs).
    score: each micro-batch's pixels go to it as they are decoded and are then dropped; the record holds its
    rewards (concatenated in row order) and pixels=None. Without it the record holds every row's pixels.
    """
    check_group_size(group_size)
    sampling.validate()
    prompts = [m.get("prompt", "") for m in metadata]
    model.check_prompts(prompts)
    row_ids = torch.arange(len(prompts) * group_size)[rank::world]
    rows = [prompts[int(r) // group_size] for r in row_ids]
    row_metadata = [metadata[int(r) // group_size] for r in row_ids]
    step = micro_batch or default_micro_batch(model, sampling, prompts, len(rows))
    seeds = decode_seeds(sampling.seed, row_ids)
    tokens, pixels, scores, old = [], [], [], []
    for sp in (slice(s, s + step) for s in range(0, len(rows), step)):
        tokens.append(model.sample_image_tokens(rows[sp], sampling, row_ids[sp]))
        px = model.decode_images(tokens[-1], rows[sp], seeds[sp])
        if score is None:
            pixels.append(px)
        else:
            scores.append(score(px, row_metadata[sp]))
        del px  # a scored micro-batch's pixels are freed here, before the next one is sampled
        if with_old_logprobs:
            with torch.no_grad():
                old.append(model.image_token_logprobs(rows[sp], tokens[-1], sampling.temperature, old_logprobs_guidance))
    return Rollout(list(metadata), group_size, row_ids, torch.cat(tokens), torch.cat(pixels) if pixels else None,
                   torch.cat(old) if with_old_logprobs else None, concat_rewards(scores) if scores else None, step)
