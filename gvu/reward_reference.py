"""The slow reference GvU reward, following the official algorithm literally (matrix0721/GvU):
one image at a time, one full forward pass per prompt token with no cache, the token's probability taken from
the last position, the product of raw probabilities, then the L-th root. tests/test_reward_rollout.py checks the
batched reward (gvu.reward.gvu_reward) against it and `python -m benchmarks.reward_speed` times both; training never
uses it.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def reference_token_probs(backend, pixels: torch.Tensor, query: str, text: str) -> list[float]:
    """p(T_j | image, query, T_<j) for each token j of `text`, for one image pixels [1, 3, H, W]."""
    model = backend.model
    pv = backend.pixel_values(pixels)
    prefix = backend.tokenizer(backend.config.template.understanding(query, backend.num_image_tokens)).input_ids
    answer = backend.answer_ids(text)
    probs = []
    for j in range(len(answer)):
        ids = torch.tensor([prefix + answer[:j]], device=backend.device)
        logits = model(input_ids=ids, pixel_values=pv).logits[0, -1].float()
        probs.append(torch.softmax(logits, -1)[answer[j]].item())
    return probs


def reference_reward(backend, pixels: torch.Tensor, query: str, texts: list[str]) -> torch.Tensor:
    """Geometric-mean reward [M]: product of raw probabilities, then the L-th root (the official order)."""
    out = []
    for i, text in enumerate(texts):
        probs = reference_token_probs(backend, pixels[i:i + 1], query, text)
        prod = 1.0
        for p in probs:
            prod *= p
        out.append(prod ** (1.0 / len(probs)))
    return torch.tensor(out, dtype=torch.float64)
