"""How the X-Omni backend runs its image-token decoding steps: its decoders for the engines behind `sampling.engine`
(eager | static | compiled; what each does, the prompt buckets and the compile bookkeeping are backend-neutral and
live in gvu/models/decode_engines.py).

X-Omni feeds image token k back as id vocab_size + k through its own language model (gvu/models/xomni/lm.py: the
multimodal embedding, adapter layers and mm_norm for that id, as in every other pass) and reads the next logits from
mm_head in image mode. The model builds its SDPA mask from the 2D key mask and the query's cache slot, so the same
forward serves a growing DynamicCache and a preallocated StaticCache.

Letters: R rows (conditional, then unconditional with guidance), W prompt bucket, N image tokens, V image codes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from gvu.models.decode_engines import StaticCacheDecoder
from gvu.models.janus_format import Batch


def next_logits(backend, ids: torch.Tensor, key_mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
    """ids [R, Q] through the language model into `cache` -> the last query's image-code logits [R, V], fp32."""
    return backend.model(ids, key_mask, positions, cache)[:, -1].float()


class EagerDecoder:
    """transformers' DynamicCache: the cache and the attention mask grow by one position a step."""

    def __init__(self, backend, prompt: Batch):
        self.backend, self.cache = backend, DynamicCache()
        self.mask, self.last = prompt.mask, prompt.positions[:, -1:]

    def prefill(self, prompt: Batch) -> torch.Tensor:
        return next_logits(self.backend, prompt.ids, prompt.mask, prompt.positions, self.cache)

    def step(self, tokens: torch.Tensor, i: int) -> torch.Tensor:
        """tokens [R]: image code i of every row -> logits [R, V] for code i + 1."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        ids = (tokens + self.backend.vocab_size)[:, None]
        return next_logits(self.backend, ids, self.mask, self.last + 1 + i, self.cache)


class StaticDecoder(StaticCacheDecoder):
    """X-Omni's static decoder: a StaticCache for R rows of a prompt bucket W plus N image tokens, and the fixed-shape
    step (compiled or not). key: (R, W, compiled, dtype, device)."""

    def __init__(self, backend, key: tuple):
        self.backend = backend
        super().__init__(key, backend.model.config, backend.num_image_tokens, backend.pad_id)

    def prefill(self, prompt: Batch) -> torch.Tensor:
        """Run the prompt [R, W] into the cache's slots 0..W-1 (eagerly: it runs once per rollout), the mask over all
        W + N slots -> logits [R, V] for code 0."""
        return next_logits(self.backend, prompt.ids, self.mask, prompt.positions, self.cache)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The fixed-shape step: codes [R], positions [R, 1] -> logits [R, V]; the query takes the cache's next slot."""
        return next_logits(self.backend, (tokens + self.backend.vocab_size)[:, None], self.mask, positions, self.cache)
