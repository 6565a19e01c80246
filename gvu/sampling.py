"""Pure sampling math on logits: classifier-free guidance and the token filters. No model code here."""

from __future__ import annotations

import torch

from gvu.config import SamplingConfig


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: u + s (c - u). cond, uncond: [M, V] -> [M, V]."""
    return uncond + scale * (cond - uncond)


def filter_logits(logits: torch.Tensor, s: SamplingConfig) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p; removed tokens get -inf. logits: [M, V] float32."""
    logits = logits / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens before it already hold top_p of the mass (the top token is always kept)
        drop_sorted = (probs.cumsum(-1) - probs) >= s.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if s.min_p > 0.0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < s.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def sample(logits: torch.Tensor, s: SamplingConfig, generator: torch.Generator) -> torch.Tensor:
    """Draw one token per row from the filtered logits [M, V] -> [M] long."""
    probs = filter_logits(logits.float(), s).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
