"""Group rollout: G images for each of B prompts, batched across prompts, decoded to pixels.

Rows are grouped: rows b*G .. b*G + G - 1 belong to prompt b. Everything the loss needs travels in the
typed Rollout record.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from gvu.config import SamplingConfig
from gvu.models.adapter import UnifiedModel


@dataclass
class Rollout:
    metadata: list[dict]  # B prompts in GenEval format (their "prompt" field is the text)
    group_size: int  # G
    tokens: torch.Tensor  # [B*G, N] long, sampled image tokens
    pixels: torch.Tensor  # [B*G, 3, H, W] float in [-1, 1], the decoded images
    old_logprobs: torch.Tensor | None = None  # [B*G, N] conditional-branch log p at sampling time (GRPO's pi_old)

    @property
    def prompts(self) -> list[str]:
        """B prompt texts."""
        return [m["prompt"] for m in self.metadata]

    @property
    def row_prompts(self) -> list[str]:
        """B*G prompt texts, one per image row."""
        return [p for p in self.prompts for _ in range(self.group_size)]

    @property
    def row_metadata(self) -> list[dict]:
        return [m for m in self.metadata for _ in range(self.group_size)]


def check_group_size(group_size: int) -> None:
    if group_size < 2:
        raise ValueError(f"group size G must be >= 2 (got {group_size}): GRPO's advantages compare images of one prompt")


def rollout(model: UnifiedModel, metadata: list[dict], group_size: int, sampling: SamplingConfig,
            with_old_logprobs: bool = False, micro_batch: int | None = None) -> Rollout:
    """Sample G images per prompt and decode them. Reproducible: the same seed and inputs give the same tokens.

    micro_batch: rows sampled per call (memory bound); None samples all B*G rows at once.
    """
    check_group_size(group_size)
    sampling.validate()
    prompts = [m.get("prompt", "") for m in metadata]
    model.check_prompts(prompts)
    rows = [p for p in prompts for _ in range(group_size)]
    step = micro_batch or len(rows)
    chunks = [model.sample_image_tokens(rows[s:s + step], replace(sampling, seed=sampling.seed + s))
              for s in range(0, len(rows), step)]
    tokens = torch.cat(chunks)
    pixels = torch.cat([model.decode_images(tokens[s:s + step]) for s in range(0, len(rows), step)])
    old = None
    if with_old_logprobs:
        with torch.no_grad():
            old = torch.cat([model.image_token_logprobs(rows[s:s + step], tokens[s:s + step])
                             for s in range(0, len(rows), step)])
    return Rollout(list(metadata), group_size, tokens, pixels, old)
