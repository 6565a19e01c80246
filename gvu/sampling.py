"""Pure sampling math on logits: classifier-free guidance and the token filters. No model code here."""

from __future__ import annotations

import torch

from gvu.config import SamplingConfig


def guidance_scale(sampling: SamplingConfig, default: float, hint: str) -> float:
    """The rollout's guidance scale: sampling.cfg_scale, else the backend's default. With guidance on it must be
    > 1 (a scale of 1 is the conditional branch at twice the cost); hint: the backend's advice, for the error."""
    scale = sampling.cfg_scale if sampling.cfg_scale is not None else default
    if sampling.guidance and scale <= 1:
        raise ValueError(f"guidance is on, so cfg_scale must be > 1 (got {scale}); {hint}")
    return scale


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


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def row_uniforms(seed: int, row_ids: torch.Tensor, step: int) -> torch.Tensor:
    """One uniform in [0, 1) per row, a pure function of (seed, global row id, step): splitmix64 in int64
    arithmetic (wrapping). A row's draws therefore do not depend on which other rows share its batch or its
    rank, so sampling gives the same images on one process and on W ranks (gvu.dist deals rows by stride)."""
    key = torch.full_like(row_ids, (seed * 1_000_003 + step) % (1 << 62), dtype=torch.long)
    x = row_ids.long() * -7046029254386353131 + key * -4658895280553007687
    x = x ^ _shr(x, 30)
    x = x * -4658895280553007687
    x = x ^ _shr(x, 27)
    x = x * -7723592293110705685
    x = x ^ _shr(x, 31)
    return _shr(x, 11).double() * (2.0 ** -53)


def sample(logits: torch.Tensor, s: SamplingConfig, row_ids: torch.Tensor, step: int) -> torch.Tensor:
    """Draw one token per row from the filtered logits [M, V] -> [M] long, by inverse CDF at row_uniforms."""
    probs = filter_logits(logits.float(), s).softmax(-1).double()
    cdf = probs.cumsum(-1)
    u = row_uniforms(s.seed, row_ids.to(logits.device), step)[:, None] * cdf[:, -1:]
    # right=True: the first token whose cdf exceeds u, so a zero-probability token is never drawn (even at u = 0)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=logits.shape[-1] - 1)
