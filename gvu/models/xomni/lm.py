"""X-Omni's language model, built from transformers' own Qwen2 components.

One Qwen2 decoder reads text and image tokens from one id space: ids below `vocab_size` are text (embedded by
`lm_embed_tokens`), ids from `vocab_size` on are multimodal (`mm_embed_tokens`, id - vocab_size: the 16,384 image
codes first, then the specials). As in X-Omni's modeling_xomni.py:
- the first `num_mm_adap_layers` and last `num_mm_head_layers` layers update image (multimodal) positions only; text
  positions pass through them unchanged (they still serve as keys and values);
- the final norm is `mm_norm` at multimodal positions and `lm_norm` at text positions;
- `lm_head` scores the text vocabulary (text mode), `mm_head` the image codes (image mode; its rows past the codes,
  the specials, are never sampled).

Module names equal the published checkpoint's keys (model.lm_embed_tokens.weight, model.layers.N.self_attn.q_proj.weight,
model.lm_norm.weight, lm_head.weight, mm_head.weight, ...: `checkpoint_keys`), so its safetensors load as they are.

Letters: M rows, T positions (Q queries in this call, K keys with the cache), C hidden size.
"""

from __future__ import annotations

import inspect

import torch
import torch.utils.checkpoint
from torch import nn
from transformers import Qwen2Config
from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RMSNorm, Qwen2RotaryEmbedding

# config.json keys that are X-Omni's own (or the loader's), not Qwen2Config's
XOMNI_KEYS = ("num_mm_adap_layers", "num_mm_head_layers", "mm_vocab_size", "image_vocab_size", "mm_special_tokens",
              "vision_config")
GENERATION_MODES = ("text", "image")


def qwen2_config(cfg: dict) -> Qwen2Config:
    """A Qwen2Config from an X-Omni config.json (its X-Omni fields kept as attributes), attention through SDPA."""
    plain = {k: v for k, v in cfg.items() if k not in (*XOMNI_KEYS, "architectures", "auto_map", "model_type",
                                                       "transformers_version", "torch_dtype", "dtype")}
    if plain.get("use_sliding_window"):
        raise ValueError("this X-Omni config turns on sliding-window attention, which gvu's X-Omni port does not "
                         "implement (X-Omni-En, like Qwen2.5-7B, has it off)")
    config = Qwen2Config(**plain)
    config.num_mm_adap_layers = cfg.get("num_mm_adap_layers", 4)
    config.num_mm_head_layers = cfg.get("num_mm_head_layers", 4)
    config.mm_vocab_size = cfg["mm_vocab_size"]
    config.image_vocab_size = cfg["image_vocab_size"]
    config._attn_implementation = "sdpa"
    return config


def is_adapter_layer(config, index: int) -> bool:
    """Whether layer `index` updates multimodal positions only (X-Omni's first and last few layers)."""
    return not (config.num_mm_adap_layers <= index < config.num_hidden_layers - config.num_mm_head_layers)


def attention_mask(key_mask: torch.Tensor, queries: int, first: int | torch.Tensor | None = None) -> torch.Tensor:
    """Boolean SDPA mask [M, 1, Q, K] (True: attend) for Q queries at key slots first .. first + Q - 1: causal, and
    blind to padding.

    key_mask [M, K] bool, False on (left) padding. first: the first query's slot among the K keys; None: the last Q
    of the K (no cache, or a cache grown by this call). In a preallocated cache K is the cache's length and the
    queries sit at the slot it writes next, wherever that is; the causal part hides the slots after them, which are
    not written yet. A padding query attends to itself alone, so that no row is fully masked (SDPA would return NaN
    there, and NaN times a zero weight still spreads)."""
    k = key_mask.shape[1]
    first = k - queries if first is None else first
    q_pos = (torch.arange(queries, device=key_mask.device) + first)[:, None]
    k_pos = torch.arange(k, device=key_mask.device)[None, :]
    allowed = (k_pos <= q_pos)[None] & key_mask.bool()[:, None, :]
    return (allowed | (k_pos == q_pos)[None])[:, None]


class XOmniModel(nn.Module):
    """The decoder stack: two embeddings, Qwen2 layers, two final norms (names as in the checkpoint's `model.`)."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        # padding_idx -1 (the table's last row gets no gradient) as X-Omni builds both tables
        self.lm_embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=-1)
        self.mm_embed_tokens = nn.Embedding(config.mm_vocab_size, config.hidden_size, padding_idx=-1)
        self.layers = nn.ModuleList(Qwen2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.lm_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mm_norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(config=config)
        params = inspect.signature(Qwen2DecoderLayer.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"  # the name changed in transformers 5
        self.checkpointing = False  # recompute each layer in backward (XOmniBackend.checkpointed); no cache then

    def multimodal(self, ids: torch.Tensor) -> torch.Tensor:
        """[M, Q] bool: True where an id is an image code or a multimodal special."""
        return ids >= self.config.vocab_size

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [M, Q] -> [M, Q, C]: text ids through lm_embed_tokens, multimodal ids through mm_embed_tokens."""
        mm = self.multimodal(ids)
        text = self.lm_embed_tokens(ids.masked_fill(mm, 0))
        image = self.mm_embed_tokens((ids - self.config.vocab_size).masked_fill(~mm, 0))
        return torch.where(mm[..., None], image, text)

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor, positions: torch.Tensor, cache=None) -> torch.Tensor:
        """ids [M, Q], key_mask [M, K] (False on padding), positions [M, Q] -> normed hidden [M, Q, C].
        cache: a transformers DynamicCache (K = cached + Q) or StaticCache (K = its length; gvu/models/xomni/decode.py),
        written in place at the slots from its current length on, which the mask's queries take (None: no cache)."""
        mm = self.multimodal(ids)[..., None]
        hidden = self.embed(ids)
        rope = self.rotary_emb(hidden, positions)
        # a StaticCache's length is a tensor: under torch.compile the slot is data, and one graph serves every step
        mask = attention_mask(key_mask, ids.shape[1], cache.get_seq_length() if cache is not None else None)
        kw = {self._cache_kw: cache, "use_cache": cache is not None}
        for i, layer in enumerate(self.layers):
            if self.checkpointing and torch.is_grad_enabled() and cache is None:
                out = torch.utils.checkpoint.checkpoint(layer, hidden, use_reentrant=False, attention_mask=mask,
                                                        position_ids=positions, position_embeddings=rope, **kw)
            else:
                out = layer(hidden, attention_mask=mask, position_ids=positions, position_embeddings=rope, **kw)
            out = out[0] if isinstance(out, tuple) else out  # transformers 4.x layers return a tuple
            hidden = torch.where(mm, out, hidden) if is_adapter_layer(self.config, i) else out
        return torch.where(mm, self.mm_norm(hidden), self.lm_norm(hidden))


class XOmniForCausalLM(nn.Module):
    """The decoder with its two heads. `generation_mode` picks the head that `logits` uses."""

    def __init__(self, config: Qwen2Config):
        super().__init__()
        self.config = config
        self.model = XOmniModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.mm_head = nn.Linear(config.hidden_size, config.mm_vocab_size, bias=False)
        self.generation_mode = "text"

    def set_generation_mode(self, mode: str) -> None:
        if mode not in GENERATION_MODES:
            raise ValueError(f"generation mode must be one of {GENERATION_MODES}, got {mode!r}")
        self.generation_mode = mode

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [M, Q, C] -> text logits [M, Q, vocab_size] (text mode) or image-code logits [M, Q,
        image_vocab_size] (image mode): X-Omni fills every other entry of its full-vocabulary logits with the dtype's
        minimum, which softmax turns into probability 0, so leaving them out changes no probability."""
        if self.generation_mode == "text":
            return self.lm_head(hidden)
        return self.mm_head(hidden)[..., : self.config.image_vocab_size]

    def forward(self, ids: torch.Tensor, key_mask: torch.Tensor, positions: torch.Tensor, cache=None) -> torch.Tensor:
        return self.logits(self.model(ids, key_mask, positions, cache))


def checkpoint_keys(config) -> list[str]:
    """The parameter names of X-Omni-En's language model, as its model.safetensors.index.json lists them."""
    per_layer = ["self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
                 "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight", "mlp.gate_proj.weight",
                 "mlp.up_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight", "post_attention_layernorm.weight"]
    keys = ["model.lm_embed_tokens.weight", "model.mm_embed_tokens.weight", "model.lm_norm.weight",
            "model.mm_norm.weight", "lm_head.weight", "mm_head.weight"]
    keys += [f"model.layers.{i}.{k}" for i in range(config.num_hidden_layers) for k in per_layer]
    return sorted(keys)
