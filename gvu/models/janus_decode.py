"""How the Janus backend runs its image-token decoding steps: its decoders for the engines behind `sampling.engine`
(eager | static | compiled; what each does, the prompt buckets and the compile bookkeeping are backend-neutral and
live in gvu/models/decode_engines.py).

Janus feeds an image token back through its generation embeddings and aligner, and reads the next logits from its
generation head; the language model is transformers' LlamaModel, which builds the attention mask itself from the
2D mask and the cache."""

from __future__ import annotations

import torch
from transformers import DynamicCache

from gvu.models.decode_engines import StaticCacheDecoder
from gvu.models.janus_format import Batch


def image_embeds(model, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [R] -> the next step's input embeddings [R, 1, D], in the text embeddings' dtype: under bf16 autocast
    over fp32 weights the aligner computes in bf16 while the prompt's embeddings are fp32, and the keys written into
    a preallocated cache must keep the dtype of the prompt's (image_token_logits casts the same way)."""
    return model.prepare_embeddings_for_image_generation(tokens)[:, None].to(model.get_input_embeddings().weight.dtype)


class EagerDecoder:
    """transformers' DynamicCache: the cache and the attention mask grow by one position a step."""

    def __init__(self, backend, prompt: Batch):
        self.backend, self.cache = backend, DynamicCache()
        self.mask, self.last = prompt.mask, prompt.positions[:, -1:]

    def prefill(self, prompt: Batch) -> torch.Tensor:
        model = self.backend.model
        hidden = self.backend._lm_step(model.get_input_embeddings()(prompt.ids), prompt.mask, prompt.positions, self.cache)
        return model.model.generation_head(hidden).float()

    def step(self, tokens: torch.Tensor, i: int) -> torch.Tensor:
        """tokens [R]: image token i of every row -> logits [R, V] for token i + 1."""
        model = self.backend.model
        embeds = image_embeds(model, tokens)
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        hidden = self.backend._lm_step(embeds, self.mask, self.last + 1 + i, self.cache)
        return model.model.generation_head(hidden).float()


class StaticDecoder(StaticCacheDecoder):
    """Janus's static decoder: a StaticCache for R rows of a prompt bucket W plus N image tokens, and the fixed-shape
    step (compiled or not). key: (R, W, compiled, dtype, device)."""

    def __init__(self, backend, key: tuple):
        self.backend = backend
        super().__init__(key, backend.model.config, backend.num_image_tokens, backend.ids["pad"])

    def prefill(self, prompt: Batch) -> torch.Tensor:
        """Run the prompt [R, W] into the cache (eagerly: it runs once per rollout) -> logits [R, V] for token 0."""
        model = self.backend.model
        hidden = self.backend._lm_step(model.get_input_embeddings()(prompt.ids), self.mask, prompt.positions, self.cache)
        return model.model.generation_head(hidden).float()

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The fixed-shape step: tokens [R], positions [R, 1] -> logits [R, V]. The cache writes at its own
        cumulative length (a tensor, so the position is data, not shape)."""
        model = self.backend.model
        embeds = image_embeds(model, tokens)
        hidden = self.backend._lm_step(embeds, self.mask, positions, self.cache)
        return model.model.generation_head(hidden).float()
