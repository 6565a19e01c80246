"""How the Janus backend runs its image-token decoding steps: the engines behind `sampling.engine`.

- eager: transformers' DynamicCache, grown by one position a step; the attention mask grows with it.
- static: a StaticCache preallocated for the prompt plus N image tokens, and a fixed-shape step: the attention mask
  covers the whole cache from the start (the causal mask hides the positions not yet written), each step feeds one
  token per row at a position computed outside the model. Every step has the same shapes, so
- compiled: the static step under torch.compile(fullgraph=True, dynamic=False); on CUDA mode="reduce-overhead",
  which replays the step as a CUDA graph (one launch instead of hundreds). It compiles once per shape (rows, prompt
  bucket) and keeps the compiled step for the next rollout of that shape; the compile time is printed once.

Prompts are left-padded to a bucket of PROMPT_BUCKET positions so that batches of different prompt lengths share
a shape. Left padding is masked, and pads get position 0, so the extra pads change nothing but the order of
floating-point sums; the engines draw the same tokens (tests/test_rollout_engines.py checks it).

The sampling loop itself (guidance, filters, the draws) is the backend's, shared by every engine; a decoder only
turns the previous token into the next step's image-token logits [R, V] (R = rows x branches, V image vocabulary).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache, StaticCache

from gvu.config import ENGINES  # noqa: F401  (re-exported: the engines this module implements)
from gvu.dist import print0
from gvu.models.janus_format import Batch

PROMPT_BUCKET = 16  # prompt widths are rounded up to a multiple of this, so a compiled step serves many batches
# the (rows, cache length, dtype, device) shapes compiled in this process: torch.compile keeps each graph, so a
# decoder rebuilt for a shape seen before (rollout and evaluation batches alternate) does not compile again
_COMPILED_SHAPES: set[tuple] = set()


@dataclass(frozen=True)
class SampledImageTokens:
    """A rollout's draws: tokens [M, N] and, when asked for, each token's log-probability [M, N] under the
    distribution it was drawn from (guided, tempered, filtered)."""

    tokens: torch.Tensor
    logprobs: torch.Tensor | None


def prompt_bucket(width: int, limit: int) -> int:
    """The padded prompt width: `width` rounded up to a multiple of PROMPT_BUCKET, at most `limit` (the positions
    left for the prompt after the image tokens), never below `width`. 17 -> 32; 40 with limit 36 -> 40 (unchanged)."""
    return max(width, min(-(-width // PROMPT_BUCKET) * PROMPT_BUCKET, limit))


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


class StaticDecoder:
    """A StaticCache for R rows of a prompt bucket W plus N image tokens, and the fixed-shape step (compiled or not).

    key: (R, W, compiled, dtype, device); the backend keeps one decoder and builds a new one when the key changes.
    """

    def __init__(self, backend, key: tuple):
        rows, width, compiled, _, device = key
        self.backend, self.key, self.width = backend, key, width
        self.n = backend.num_image_tokens
        self.cache = StaticCache(config=backend.model.config, max_cache_len=width + self.n)
        self.mask = torch.ones(rows, width + self.n, dtype=torch.long, device=device)  # [R, W + N], filled in start
        self.last = torch.zeros(rows, 1, dtype=torch.long, device=device)  # [R, 1]: each row's last prompt position
        self.compiled = compiled
        self._step = self._forward
        if compiled:
            mode = "reduce-overhead" if torch.device(device).type == "cuda" else None  # CUDA graphs on CUDA
            self._step = torch.compile(self._forward, fullgraph=True, dynamic=False, mode=mode)
        self._shape = (rows, width + self.n, key[3], str(device))
        self._compile_pending = compiled and self._shape not in _COMPILED_SHAPES

    def start(self, prompt: Batch) -> Batch:
        """Left-pad the prompt batch [R, T] to the bucket [R, W], empty the cache, and fix the full-length mask."""
        pad = self.width - prompt.ids.shape[1]
        ids = F.pad(prompt.ids, (pad, 0), value=self.backend.ids["pad"])
        mask, positions = F.pad(prompt.mask, (pad, 0)), F.pad(prompt.positions, (pad, 0))
        self.cache.reset()
        self.mask[:, :self.width] = mask  # in place: a compiled step reads the same tensor every rollout
        self.mask[:, self.width:] = 1
        self.last.copy_(positions[:, -1:])
        return Batch(ids, mask, positions)

    def prefill(self, prompt: Batch) -> torch.Tensor:
        """Run the prompt [R, W] into the cache (eagerly: it runs once per rollout) -> logits [R, V] for token 0."""
        model = self.backend.model
        hidden = self.backend._lm_step(model.get_input_embeddings()(prompt.ids), self.mask, prompt.positions, self.cache)
        return model.model.generation_head(hidden).float()

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The fixed-shape step: tokens [R], positions [R, 1] -> logits [R, V]. The cache writes at its own
        cumulative length (a tensor, so the position is data, not shape)."""
        model = self.backend.model
        embeds = image_embeds(model, tokens)
        hidden = self.backend._lm_step(embeds, self.mask, positions, self.cache)
        return model.model.generation_head(hidden).float()

    def step(self, tokens: torch.Tensor, i: int) -> torch.Tensor:
        """tokens [R]: image token i of every row -> logits [R, V] for token i + 1."""
        if not self._compile_pending:
            return self._step(tokens, self.last + 1 + i).clone()
        started = time.perf_counter()
        logits = self._step(tokens, self.last + 1 + i).clone()
        self._compile_pending = False
        _COMPILED_SHAPES.add(self._shape)
        print0(f"gvu: compiled the decoding step for {tuple(self.mask.shape)} (rows, cache length) in "
               f"{time.perf_counter() - started:.1f} s (once per shape)")
        return logits
