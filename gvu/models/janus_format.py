"""Janus's text layouts and batching, shared by pretraining and the Janus backend.

The layouts are Janus-Pro's (DeepSeek's "deepseek" SFT format):
  generation     BOS "<|User|>: {prompt}\n\n<|Assistant|>:" <begin_of_image>        then N image tokens
  unconditional  the same ids with every token except the leading BOS and the trailing <begin_of_image>
                 replaced by the pad id, attention left at 1 (what transformers' Janus generate builds, and what
                 DeepSeek's reference sampler builds; prompt dropout in pretraining produces exactly this)
  understanding  BOS "<|User|>: " <begin_of_image> <image_placeholder> x N <end_of_image> "\n{query}\n\n<|Assistant|>:"
                 then the answer, tokenised on its own as " {answer}" (+ EOS when training)
Batches are left-padded, with explicit position ids, so that every sequence ends at the same column (the
first image token is predicted from the last column for all rows at once).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class JanusTemplate:
    """Chat layout strings; defaults are Janus-Pro's. Special-token strings must exist in the tokenizer."""

    user: str = "<|User|>"
    assistant: str = "<|Assistant|>"
    system: str = ""  # prepended as-is (Janus-Pro's generation prompt has none)
    image_token: str = "<image_placeholder>"
    boi_token: str = "<begin_of_image>"
    eoi_token: str = "<end_of_image>"

    def generation(self, prompt: str) -> str:
        return f"{self.system}{self.user}: {prompt}\n\n{self.assistant}:{self.boi_token}"

    def understanding(self, query: str, num_image_tokens: int) -> str:
        image = self.boi_token + self.image_token * num_image_tokens + self.eoi_token
        return f"{self.system}{self.user}: {image}\n{query}\n\n{self.assistant}:"


@dataclass
class Batch:
    """A left-padded batch. ids, mask, positions: [B, T]."""

    ids: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor

    def to(self, device) -> "Batch":
        return Batch(self.ids.to(device), self.mask.to(device), self.positions.to(device))


def left_pad(seqs: list[list[int]], pad_id: int) -> Batch:
    """Left-pad token lists to [B, T]; positions count real tokens from 0 (pads get position 0)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s):] = 1
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return Batch(ids, mask, positions)


def unconditional(ids: torch.Tensor, mask: torch.Tensor, bos_id: int, boi_id: int, pad_id: int) -> torch.Tensor:
    """The unconditional prompt ids [B, T]: every real token except BOS and <begin_of_image> becomes pad."""
    keep = (ids == bos_id) | (ids == boi_id) | (mask == 0)
    return torch.where(keep, ids, torch.full_like(ids, pad_id))
