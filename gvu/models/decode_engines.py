"""The rollout engines behind `sampling.engine`, the parts every backend shares (Janus: gvu/models/janus_decode.py,
X-Omni: gvu/models/xomni/decode.py).

- eager: transformers' DynamicCache, grown by one position a step; the attention mask grows with it.
- static: a StaticCache preallocated for the prompt plus N image tokens, and a fixed-shape step: the attention mask
  covers the whole cache from the start (the causal mask hides the positions not yet written), each step feeds one
  token per row at a position computed outside the model. Every step has the same shapes, so it can be compiled:
- compiled: the static step under torch.compile(fullgraph=True, dynamic=False); on CUDA mode="reduce-overhead",
  which replays the step as a CUDA graph (one launch instead of hundreds). It compiles once per shape (rows, prompt
  bucket) and keeps the compiled step for the next rollout of that shape; the compile time is printed once.

Prompts are left-padded to a bucket of PROMPT_BUCKET positions so that batches of different prompt lengths share
a shape. Left padding is masked, and pads get position 0, so the extra pads change nothing but the order of
floating-point sums: in float32 the engines draw the same tokens, and under bf16 a near-tied draw may flip
(tests/test_rollout_engines.py, tests/test_xomni_engines.py).

One sampling loop (`draw_image_tokens`: guidance, filters, the seeded draws) serves every backend and engine; a
decoder only turns the previous token into the next step's image-token logits [R, V] (R = rows x branches, V image
vocabulary). A backend's static decoder subclasses StaticCacheDecoder with its own `prefill` and `forward`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import StaticCache

from gvu.config import SamplingConfig
from gvu.dist import print0
from gvu.models.janus_format import Batch
from gvu.sampling import filter_logits, guide, sample

PROMPT_BUCKET = 16  # prompt widths are rounded up to a multiple of this, so a compiled step serves many batches
# the (decoder, rows, cache length, dtype, device) shapes compiled in this process: torch.compile keeps each graph,
# so a decoder rebuilt for a shape seen before (rollout and evaluation batches alternate) does not compile again
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


class StaticCacheDecoder:
    """A StaticCache for R rows of a prompt bucket W plus N image tokens, and the fixed-shape step (compiled or not).

    key: (R, W, compiled, dtype, device); a backend keeps one decoder and builds a new one when the key changes
    (`static_decoder`). Subclasses give `prefill(prompt) -> logits [R, V]` (the bucketed prompt [R, W] into the cache,
    eagerly: it runs once per rollout) and `forward(tokens [R], positions [R, 1]) -> logits [R, V]`, the step, which
    reads `self.mask` [R, W + N] and writes `self.cache` at the cache's own cumulative length (a tensor, so the
    position is data, not shape)."""

    def __init__(self, key: tuple, model_config, num_image_tokens: int, pad_id: int):
        rows, width, compiled, dtype, device = key
        self.key, self.width, self.n, self.pad_id = key, width, num_image_tokens, pad_id
        self.cache = StaticCache(config=model_config, max_cache_len=width + self.n)
        self.mask = torch.ones(rows, width + self.n, dtype=torch.long, device=device)  # [R, W + N], filled in start
        self.last = torch.zeros(rows, 1, dtype=torch.long, device=device)  # [R, 1]: each row's last prompt position
        self.compiled = compiled
        self._step = self.forward
        if compiled:
            mode = "reduce-overhead" if torch.device(device).type == "cuda" else None  # CUDA graphs on CUDA
            self._step = torch.compile(self.forward, fullgraph=True, dynamic=False, mode=mode)
        self._shape = (type(self), rows, width + self.n, dtype, str(device))  # the class: each backend's own graph
        self._compile_pending = compiled and self._shape not in _COMPILED_SHAPES

    def start(self, prompt: Batch) -> Batch:
        """Left-pad the prompt batch [R, T] to the bucket [R, W], empty the cache, and fix the full-length mask."""
        pad = self.width - prompt.ids.shape[1]
        ids = F.pad(prompt.ids, (pad, 0), value=self.pad_id)
        mask, positions = F.pad(prompt.mask, (pad, 0)), F.pad(prompt.positions, (pad, 0))
        self.cache.reset()
        self.mask[:, :self.width] = mask  # in place: a compiled step reads the same tensor every rollout
        self.mask[:, self.width:] = 1
        self.last.copy_(positions[:, -1:])
        return Batch(ids, mask, positions)

    def prefill(self, prompt: Batch) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

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


def static_decoder(backend, rows: int, prompt_width: int, compiled: bool, build) -> StaticCacheDecoder:
    """The backend's static decoder (`backend._static`) for `rows` rows; a new one, `build(backend, key)`, replacing
    it, when the rows, the prompt bucket, the engine or the weights' dtype differ. The compiled engine keeps it (and
    its KV cache, R x (W + N) positions) between rollouts, so that CUDA graphs replay on the same addresses;
    `finish_rollout` frees the static engine's after each."""
    width = prompt_bucket(prompt_width, backend.max_positions - backend.num_image_tokens)
    key = (rows, width, compiled, backend.model.dtype, backend.device)
    if getattr(backend, "_static", None) is None or backend._static.key != key:
        backend._static = None  # free the old cache before allocating the new one
        backend._static = build(backend, key)
    return backend._static


def start_decoder(backend, prompt: Batch, engine: str, eager, static) -> tuple:
    """The decoder for `engine` and the prompt batch to prefill it with: eager(backend, prompt) as it is, or the
    backend's static decoder (class `static`, built by static_decoder) with the prompt left-padded to its bucket."""
    if engine == "eager":
        return eager(backend, prompt), prompt
    decoder = static_decoder(backend, prompt.ids.shape[0], prompt.ids.shape[1], engine == "compiled", static)
    return decoder, decoder.start(prompt)


def finish_rollout(backend, engine: str) -> None:
    """After a rollout: the static engine has nothing compiled to keep, so free its KV cache for the reward and the
    update; the compiled engine keeps its decoder for the next rollout of the same shape."""
    if engine == "static":
        backend._static = None


def draw_image_tokens(backend, prompt: Batch, m: int, sampling: SamplingConfig, scale: float, rows: torch.Tensor,
                      with_logprobs: bool, eager, static) -> SampledImageTokens:
    """The sampling loop of every backend and engine: N image tokens for m images, one decoding step at a time.

    prompt: [R, T] with R = m (no guidance) or 2m (guidance: conditional rows, then unconditional); scale: the
    guidance scale; rows [m]: each image's row id for the seeded draws (gvu.sampling.row_uniforms); eager, static:
    the backend's decoder classes for `sampling.engine`. Each step guides, draws, and feeds the drawn token to every
    branch of its row; with_logprobs also returns each token's log-probability under the distribution it was drawn
    from (guided, tempered, filtered)."""
    decoder, prompt = start_decoder(backend, prompt, sampling.engine, eager, static)
    logits = decoder.prefill(prompt)
    n, branches = backend.num_image_tokens, prompt.ids.shape[0] // m
    tokens = torch.empty(m, n, dtype=torch.long, device=backend.device)
    logprobs = torch.empty(m, n, device=backend.device) if with_logprobs else None
    for i in range(n):
        if sampling.guidance:
            logits = guide(logits[:m], logits[m:], scale)
        tokens[:, i] = sample(logits, sampling, rows, i)
        if with_logprobs:
            logprobs[:, i] = filter_logits(logits, sampling).log_softmax(-1).gather(-1, tokens[:, i, None])[:, 0]
        if i < n - 1:
            logits = decoder.step(tokens[:, i].repeat(branches), i)
    finish_rollout(backend, sampling.engine)
    return SampledImageTokens(tokens, logprobs)
