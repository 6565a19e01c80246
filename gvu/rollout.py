"""Group rollout: G images for each of B prompts, batched across prompts, decoded to pixels.

Global rows are grouped: rows b*G .. b*G + G - 1 belong to prompt b. Under torch.distributed each rank holds the
rows rank, rank + W, ... (gvu.dist.rank_slice); a row's images depend only on (seed, global row id), so one process
and W ranks sample the same images. Everything the loss needs travels in the typed Rollout record.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gvu.config import SamplingConfig
from gvu.models.adapter import UnifiedModel, decode_seeds


@dataclass
class Rollout:
    metadata: list[dict]  # B prompts in GenEval format (their "prompt" field is the text)
    group_size: int  # G
    row_ids: torch.Tensor  # [M] long, the global row ids this process holds (all B*G rows on one process)
    tokens: torch.Tensor  # [M, N] long, sampled image tokens
    pixels: torch.Tensor  # [M, 3, H, W] float in [-1, 1], the decoded images
    old_logprobs: torch.Tensor | None = None  # [M, N] conditional-branch log p at sampling time (GRPO's pi_old)

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


def rollout(model: UnifiedModel, metadata: list[dict], group_size: int, sampling: SamplingConfig,
            with_old_logprobs: bool = False, micro_batch: int | None = None, rank: int = 0, world: int = 1,
            old_logprobs_guidance: float | None = None) -> Rollout:
    """Sample G images per prompt (this rank's rows) and decode them. Reproducible from sampling.seed.

    micro_batch: rows sampled per call (memory bound); None samples all of this rank's rows at once.
    old_logprobs_guidance: the guidance of the old log-probs (None: the conditional branch; see loss_logprobs).
    """
    check_group_size(group_size)
    sampling.validate()
    prompts = [m.get("prompt", "") for m in metadata]
    model.check_prompts(prompts)
    row_ids = torch.arange(len(prompts) * group_size)[rank::world]
    rows = [prompts[int(r) // group_size] for r in row_ids]
    step = micro_batch or len(rows)
    spans = [slice(s, s + step) for s in range(0, len(rows), step)]
    tokens = torch.cat([model.sample_image_tokens(rows[sp], sampling, row_ids[sp]) for sp in spans])
    seeds = decode_seeds(sampling.seed, row_ids)
    pixels = torch.cat([model.decode_images(tokens[sp], rows[sp], seeds[sp]) for sp in spans])
    old = None
    if with_old_logprobs:
        with torch.no_grad():
            old = torch.cat([model.image_token_logprobs(rows[sp], tokens[sp], sampling.temperature, old_logprobs_guidance)
                             for sp in spans])
    return Rollout(list(metadata), group_size, row_ids, tokens, pixels, old)
