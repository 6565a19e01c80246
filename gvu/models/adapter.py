"""The unified-model adapter: the one boundary between gvu's trainer and any model that both generates and
understands images. The trainer, rollout and reward know only this protocol; each backend is one file
(gvu/models/janus.py for transformers' Janus classes: nano-Janus and Janus-Pro alike; gvu/models/xomni/ for
X-Omni). gvu/models/registry.py picks the backend from a checkpoint's config.json.

Letters: M rows (M = B*G in training), N image tokens per image, L scored text tokens, H/W pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from gvu.config import SamplingConfig


@dataclass
class TokenLogprobs:
    """Per-token log-probs of texts under the understanding branch; rows are left-aligned."""

    logprobs: torch.Tensor  # [M, L] float32, log p(token_j | image, query, tokens_<j); 0 where mask is False
    mask: torch.Tensor  # [M, L] bool, True on real tokens
    token_ids: torch.Tensor  # [M, L] long, the scored token ids (a pad value, not a scored token, where mask is False)

    def tokens_as_text(self, tokenizer, row: int) -> list[str]:
        ids = self.token_ids[row][self.mask[row]].tolist()
        return [tokenizer.decode([i]) for i in ids]


class UnifiedModel(Protocol):
    num_image_tokens: int  # N
    image_vocab_size: int  # size of the image-token codebook
    image_size: int  # H = W of decoded images
    default_cfg_scale: float  # rollout's guidance scale when SamplingConfig.cfg_scale is None
    tokenizer: object
    device: torch.device  # where the model's weights live (rollout sizes its default micro-batch from its memory)

    def check_prompts(self, prompts: list[str]) -> None:
        """Raise ValueError naming the first empty or too-long prompt."""

    def sample_image_tokens(self, prompts: list[str], sampling: SamplingConfig,
                            row_ids: torch.Tensor | None = None) -> torch.Tensor:
        """One image per prompt (repeat prompts for groups): tokens [M, N], seeded by sampling.seed; row_ids [M]
        (default 0..M-1) make each row's draws independent of its batch and rank. With sampling.guidance False,
        draws from the conditional branch alone."""

    def image_token_logprobs(self, prompts: list[str], tokens: torch.Tensor, temperature: float = 1.0,
                             guidance: float | None = None) -> torch.Tensor:
        """Differentiable log p(tokens | prompt) [M, N] under the conditional generation branch, or, with
        guidance s, under the guided distribution softmax((u + s (c - u)) / temperature)."""

    def decode_images(self, tokens: torch.Tensor, prompts: list[str] | None = None,
                      seeds: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [M, N] -> pixels [M, 3, H, W] in [-1, 1]. prompts (M texts) and seeds [M] long feed decoders that
        read them (X-Omni's FLUX decoder is conditioned on the prompt and starts from seeded noise); a VQ decoder
        (Janus) ignores both. Without seeds a backend seeds row i with i."""

    def text_logprobs(self, pixels: torch.Tensor, query: str, texts: list[str]) -> TokenLogprobs:
        """Teacher-forced log p(text tokens | image, query) for each row, in one batched pass. How the image enters
        is the backend's business (Janus: vision-encoder features; X-Omni: the pixels re-tokenised into codes)."""

    def rollout_bytes_per_row(self, sampling: SamplingConfig, prompts: list[str]) -> int:
        """Estimated peak bytes one row of a rollout micro-batch holds while it is sampled and decoded, for the
        longest of `prompts` (rollout_row_bytes with this model's sizes): what rollout's default micro-batch divides
        the free memory by."""


DECODER_LIVE_MAPS = 3  # full-resolution feature maps a decoder's residual block holds at once (input, hidden, output)


def rollout_row_bytes(layers: int, kv_heads: int, head_dim: int, positions: int, weight_bytes: int, guided: bool,
                      vocab: int, image_size: int, decoder_channels: int) -> int:
    """Bytes one rollout row holds at its peak, summed over its parts (a bound: the parts do not all coexist):
      KV cache       layers x 2 (K, V) x kv_heads x head_dim x positions (longest prompt + N) x weight_bytes
                     x branches (2 with guidance: conditional and unconditional rows);
      step logits    vocab x 4 (float32) x branches;
      pixels         3 x H x W x 4 (float32, the decoded image);
      decoder maps   DECODER_LIVE_MAPS x decoder_channels x H x W x weight_bytes (the decoder's full-resolution layers).
    """
    branches = 2 if guided else 1
    kv = layers * 2 * kv_heads * head_dim * positions * weight_bytes * branches
    logits = vocab * 4 * branches
    pixels = 3 * image_size * image_size * 4
    decoder = DECODER_LIVE_MAPS * decoder_channels * image_size * image_size * weight_bytes
    return kv + logits + pixels + decoder


def decode_seeds(seed: int, row_ids: torch.Tensor) -> torch.Tensor:
    """Per-row decoder seeds [M] long, a pure function of (seed, global row id): a row decodes alike in any batch
    and on any rank. Kept below 2**62 so that torch.Generator.manual_seed takes them."""
    return (row_ids.long() + (int(seed) * 1_000_003) % (1 << 62)) % (1 << 62)


def check_prompts(prompts: list[str], prompt_length, num_image_tokens: int, max_positions: int) -> None:
    """Every backend's prompt check: at least one prompt, none empty, and each one's tokens (prompt_length(p)) plus
    its N image tokens within the model's positions. Raises ValueError naming the first bad prompt."""
    if not prompts:
        raise ValueError("no prompts given")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"empty prompt {p!r}: every prompt needs text")
        need = prompt_length(p) + num_image_tokens
        if need > max_positions:
            raise ValueError(f"prompt {p[:60]!r}... needs {need} positions with its {num_image_tokens} image "
                             f"tokens; the model has {max_positions}. Shorten it.")


def check_image_tokens(tokens: torch.Tensor, num_image_tokens: int, image_vocab_size: int) -> None:
    """tokens must be [M, N] codebook ids in [0, image_vocab_size)."""
    if tokens.dim() != 2 or tokens.shape[1] != num_image_tokens:
        raise ValueError(f"image tokens must be [M, {num_image_tokens}], got {tuple(tokens.shape)}")
    if tokens.numel() and (tokens.min() < 0 or tokens.max() >= image_vocab_size):
        raise ValueError(f"image token ids must be in [0, {image_vocab_size}); got "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")
