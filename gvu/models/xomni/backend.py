"""The X-Omni backend: gvu's UnifiedModel over X-Omni's language model, SigLIP-VQ tokenizer and FLUX decoder.

Generation (as matrix0721/GvU's trainer runs X-Omni): the raw prompt, no chat template, followed by
"<SOM>h w<IMAGE>"; image mode (mm_head over the image codes); a KV cache; image token k enters as id vocab_size + k.
Understanding (the GvU reward): the decoded image is re-tokenised into codes by the SigLIP-VQ tokenizer and placed,
as "<SOM>h w<IMAGE>" + codes + "<EOM>", before "\\n" + query in the tokenizer's chat template; text mode (lm_head)
scores the prompt's tokens, all rows in one teacher-forced pass (the official code runs one forward per token, one
image at a time: the same numbers).

Letters: M rows, N = h*w image tokens, L scored text tokens, T prompt positions, H/W pixels.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.nn.functional as F

from gvu.config import SamplingConfig
from gvu.models.adapter import TokenLogprobs, check_image_tokens, check_prompts, rollout_row_bytes
from gvu.models.decode_engines import SampledImageTokens, draw_image_tokens
from gvu.models.janus_format import Batch, left_pad
from gvu.models.xomni.config import CheckpointError, XOmniBackendConfig, check_checkpoint
from gvu.models.xomni.decode import EagerDecoder, StaticDecoder
from gvu.models.xomni.flux_decoder import DecoderConfig, FluxDecoder, check_flux_dir
from gvu.models.xomni.lm import XOmniForCausalLM, checkpoint_keys, qwen2_config
from gvu.models.xomni.siglip_vq import SiglipVQ, TokenizerConfig, vit_state_from_timm
from gvu.sampling import guidance_scale, guide

PLACEHOLDER = "\x00image\x00"  # stands for the code run while the chat template is rendered to text


class XOmniBackend:
    """UnifiedModel for X-Omni. `model` is the language model alone (what LoRA wraps and checkpoints hold); the
    image tokenizer and the decoder stay frozen beside it."""

    def __init__(self, model: XOmniForCausalLM, tokenizer, image_tokenizer: SiglipVQ, decoder: FluxDecoder | None,
                 config: XOmniBackendConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.image_tokenizer, self.decoder = image_tokenizer.eval().requires_grad_(False), decoder
        self.config = config or XOmniBackendConfig()
        c = model.config
        self.vocab_size = c.vocab_size
        self.image_vocab_size = c.image_vocab_size
        if image_tokenizer.cfg.codebook_size != self.image_vocab_size:
            raise CheckpointError(f"the image tokenizer has {image_tokenizer.cfg.codebook_size} codes but the language "
                                  f"model {self.image_vocab_size}: they are not one X-Omni checkpoint")
        first = tokenizer.convert_tokens_to_ids(self.config.image_token.format(code=0))
        if first != self.vocab_size:
            raise CheckpointError(f"the tokenizer's {self.config.image_token.format(code=0)} has id {first}, not "
                                  f"vocab_size {self.vocab_size}: it is not X-Omni's tokenizer")
        self.grid = self.config.grid
        self.num_image_tokens = self.grid * self.grid
        self.image_size = self.config.image_size
        self.default_cfg_scale = self.config.default_cfg_scale
        self.max_positions = c.max_position_embeddings
        self.pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)
        self._prefix = self.config.image_prefix.format(h=self.grid, w=self.grid)

    @staticmethod
    def from_pretrained(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        **overrides) -> XOmniBackend:
        """Load an X-Omni folder (X-Omni-En's layout). Files, settings and the FLUX folder are checked before any
        weight is read; overrides replace gvu_backend.json's settings (e.g. flux_dir=...)."""
        from transformers import AutoTokenizer

        cfg = check_checkpoint(path)
        config = XOmniBackendConfig.load(path, cfg, **overrides)
        check_flux_dir(config.flux_dir)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = XOmniForCausalLM(qwen2_config(cfg))
        model.load_state_dict(read_language_model(path, model.config), strict=True)
        encoder = cfg["vision_config"].get("encoder", {})
        image_tokenizer = load_image_tokenizer(path, encoder)
        decoder = FluxDecoder.load(config.flux_dir, path, DecoderConfig.from_decoder(cfg["vision_config"].get("decoder", {})),
                                   image_tokenizer.cfg.z_channels, dtype, device)
        return XOmniBackend(model.to(device, dtype).eval(), tokenizer, image_tokenizer.to(device, dtype), decoder, config)

    @property
    def device(self) -> torch.device:
        return self.model.lm_head.weight.device

    def full_finetune_modules(self) -> list[torch.nn.Module]:
        """What full fine-tuning trains: the generation path, the modules the image-token loss reaches (embeddings,
        layers, mm_norm, mm_head). lm_head (text mode only) stays frozen, and lm_norm too unless the prompt's last
        token, which predicts the first image token, is a text token."""
        lm = self.model.model
        modules = [lm.lm_embed_tokens, lm.mm_embed_tokens, lm.layers, lm.mm_norm, self.model.mm_head]
        last = self.prompt_ids("x")[-1]
        return modules + ([lm.lm_norm] if last < self.vocab_size else [])

    @contextlib.contextmanager
    def checkpointed(self):
        """Recompute each decoder layer in backward (the update's teacher-forced passes); never sample inside."""
        self.model.model.checkpointing = True
        try:
            yield
        finally:
            self.model.model.checkpointing = False

    # ------------------------------------------------------------------------------------------ text layout
    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt + self._prefix).input_ids

    def prompt_batch(self, prompts: list[str]) -> Batch:
        b = left_pad([self.prompt_ids(p) for p in prompts], self.pad_id)
        return Batch(b.ids.to(self.device), b.mask.to(self.device), b.positions.to(self.device))

    def check_prompts(self, prompts: list[str]) -> None:
        check_prompts(prompts, lambda p: len(self.prompt_ids(p)), self.num_image_tokens, self.max_positions)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        check_image_tokens(tokens, self.num_image_tokens, self.image_vocab_size)

    def rollout_bytes_per_row(self, sampling: SamplingConfig, prompts: list[str]) -> int:
        """The language model's KV cache over the longest prompt + N, the image-mode logits, the pixels and the FLUX
        VAE decoder's full-resolution maps (its first block_out_channels), in the model's dtype."""
        c = self.model.config
        vae = self.decoder.pipe.vae.config if self.decoder is not None else None
        return rollout_row_bytes(
            layers=c.num_hidden_layers, kv_heads=getattr(c, "num_key_value_heads", None) or c.num_attention_heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
            positions=max(len(self.prompt_ids(p)) for p in prompts) + self.num_image_tokens,
            weight_bytes=self.model.dtype.itemsize, guided=sampling.guidance, vocab=self.image_vocab_size,
            image_size=self.image_size, decoder_channels=vae.block_out_channels[0] if vae is not None else 0)

    def _unconditional(self, m: int, width: int) -> Batch:
        """CFG's unconditional rows [m, width]: the image prefix alone (the official negative_prompt_ids), left-padded
        to the conditional rows' width so that both share one cache."""
        ids = self.tokenizer(self._prefix, add_special_tokens=False).input_ids
        if len(ids) > width:
            raise ValueError("the unconditional prompt is longer than the prompts")
        b = left_pad([[self.pad_id] * (width - len(ids)) + ids] * m, self.pad_id)
        mask = torch.zeros_like(b.mask)
        mask[:, width - len(ids):] = 1
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return Batch(b.ids.to(self.device), mask.to(self.device), positions.to(self.device))

    # ------------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def sample_image_tokens(self, prompts: list[str], sampling: SamplingConfig,
                            row_ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [M, N], with a KV cache; row i's draws depend only on (seed, row_ids[i], position). With guidance
        the batch is [conditional rows; unconditional rows] (the `_unconditional` prefix); sampling.engine picks how
        the decoding steps run (gvu.models.xomni.decode): in float32 every engine draws the same tokens."""
        return self.sample_image_tokens_with_logprobs(prompts, sampling, row_ids, with_logprobs=False).tokens

    @torch.no_grad()
    def sample_image_tokens_with_logprobs(self, prompts: list[str], sampling: SamplingConfig,
                                          row_ids: torch.Tensor | None = None,
                                          with_logprobs: bool = True) -> SampledImageTokens:
        """sample_image_tokens, plus the log-probability [M, N] of each drawn token under the distribution it was
        drawn from (guided, tempered and filtered); None when with_logprobs is False."""
        sampling.validate()
        self.check_prompts(prompts)
        scale = guidance_scale(sampling, self.default_cfg_scale, "X-Omni's official setting samples without "
                               "guidance (sampling.guidance false)")
        self.model.set_generation_mode("image")
        m = len(prompts)
        b = self.prompt_batch(prompts)
        if sampling.guidance:
            u = self._unconditional(m, b.ids.shape[1])
            b = Batch(torch.cat([b.ids, u.ids]), torch.cat([b.mask, u.mask]), torch.cat([b.positions, u.positions]))
        rows = torch.arange(m) if row_ids is None else torch.as_tensor(row_ids)
        return draw_image_tokens(self, b, m, sampling, scale, rows, with_logprobs, EagerDecoder, StaticDecoder)

    def image_token_logits(self, batch: Batch, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced image-mode logits [M, N, S]: row j predicts tokens[:, j] from the prompt and tokens[:, :j]."""
        m, n = tokens.shape
        ids = torch.cat([batch.ids, tokens[:, :-1] + self.vocab_size], dim=1)
        mask = torch.cat([batch.mask, batch.mask.new_ones(m, n - 1)], dim=1)
        positions = torch.cat([batch.positions, batch.positions[:, -1:] + torch.arange(1, n, device=self.device)], 1)
        self.model.set_generation_mode("image")
        return self.model.logits(self.model.model(ids, mask, positions)[:, -n:])

    def image_token_logprobs(self, prompts: list[str], tokens: torch.Tensor, temperature: float = 1.0,
                             guidance: float | None = None) -> torch.Tensor:
        """log p(tokens | prompt) [M, N], differentiable; with guidance s, of softmax((u + s (c - u)) / T)."""
        self.check_tokens(tokens)
        tokens = tokens.to(self.device)
        b = self.prompt_batch(prompts)
        if guidance is None:
            logits = self.image_token_logits(b, tokens).float()
        else:
            u = self._unconditional(len(prompts), b.ids.shape[1])
            both = Batch(torch.cat([b.ids, u.ids]), torch.cat([b.mask, u.mask]), torch.cat([b.positions, u.positions]))
            logits = self.image_token_logits(both, tokens.repeat(2, 1)).float()
            logits = guide(logits[: len(prompts)], logits[len(prompts):], guidance)
        logp = F.log_softmax(logits / temperature, dim=-1)
        return logp.gather(-1, tokens[..., None]).squeeze(-1)

    @torch.no_grad()
    def decode_images(self, tokens: torch.Tensor, prompts: list[str] | None = None,
                      seeds: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [M, N] -> pixels [M, 3, H, W] in [-1, 1]: codebook -> SigLIP features -> FLUX, conditioned on
        the prompt (X-Omni decodes with the generating prompt; without prompts, the empty one) and seeded per row."""
        self.check_tokens(tokens)
        if self.decoder is None:
            raise ValueError("this X-Omni backend was built without its FLUX decoder")
        m = tokens.shape[0]
        prompts = list(prompts) if prompts is not None else [""] * m
        seeds = torch.arange(m) if seeds is None else torch.as_tensor(seeds)
        if len(prompts) != m or seeds.shape != (m,):
            raise ValueError(f"{m} token rows need {m} prompts and seeds [{m}], got {len(prompts)} and "
                             f"{tuple(seeds.shape)}")
        features = self.image_tokenizer.decode(tokens.to(self.device).view(m, self.grid, self.grid))
        return self.decoder.decode(features, prompts, seeds, self.image_size)

    # ------------------------------------------------------------------------------------------ understanding
    def image_codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels [M, 3, S, S] -> re-tokenised codes [M, h, w]: rounded to 8 bits (X-Omni re-reads a saved
        image), resized (bicubic) to the understanding side, normalised to [-1, 1]."""
        if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[2] != pixels.shape[3]:
            raise ValueError(f"images must be [M, 3, S, S] in [-1, 1], got {tuple(pixels.shape)}")
        x = ((pixels.float().clamp(-1, 1) + 1) * 127.5).round() / 255
        side = self.config.understanding_side()
        if x.shape[-1] != side:
            x = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            return self.image_tokenizer.encode(((x - 0.5) / 0.5).to(self.device, self.model.dtype))

    def understanding_parts(self, query: str, h: int, w: int) -> tuple[list[int], list[int]]:
        """Token ids before and after the code run of the understanding prompt (chat template, generation prompt)."""
        image = self.config.image_prefix.format(h=h, w=w) + PLACEHOLDER + self.config.image_suffix
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": image + "\n" + query}],
                                                  add_generation_prompt=True, tokenize=False)
        before, after = text.split(PLACEHOLDER)
        enc = self.tokenizer
        return enc(before, add_special_tokens=False).input_ids, enc(after, add_special_tokens=False).input_ids

    def answer_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def text_logprobs(self, pixels: torch.Tensor, query: str, texts: list[str]) -> TokenLogprobs:
        """log p(text_j | image codes, query, text_<j) [M, L], text_batch_size rows per teacher-forced pass."""
        if len(texts) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(texts)} texts")
        answers = [self.answer_ids(t) for t in texts]
        for t, a in zip(texts, answers):
            if not a or not t.strip():
                raise ValueError(f"cannot score an empty text ({t!r})")
        codes = self.image_codes(pixels.to(self.device))
        before, after = self.understanding_parts(query, codes.shape[1], codes.shape[2])
        width = max(len(a) for a in answers)
        lps = torch.zeros(len(texts), width, device=self.device)
        mask = torch.zeros(len(texts), width, dtype=torch.bool, device=self.device)
        ids_out = torch.full((len(texts), width), self.pad_id, dtype=torch.long, device=self.device)
        self.model.set_generation_mode("text")
        bs = self.config.text_batch_size
        for s in range(0, len(texts), bs):
            chunk = answers[s:s + bs]
            seqs = [before + (c.flatten() + self.vocab_size).tolist() + after + a
                    for c, a in zip(codes[s:s + bs], chunk)]
            if max(map(len, seqs)) > self.max_positions:
                raise ValueError(f"an understanding row needs {max(map(len, seqs))} positions; the model has "
                                 f"{self.max_positions}. Shorten the text.")
            b = left_pad(seqs, self.pad_id)
            ids, bm, pos = b.ids.to(self.device), b.mask.to(self.device), b.positions.to(self.device)
            w = max(len(a) for a in chunk)
            hidden = self.model.model(ids, bm, pos)
            # only the last w + 1 columns matter: column t predicts token t + 1
            lp = F.log_softmax(self.model.logits(hidden[:, -w - 1:-1]).float(), -1)
            target = ids[:, -w:]
            lp = lp.gather(-1, target[..., None]).squeeze(-1)
            for r, a in enumerate(chunk):
                k = len(a)
                lps[s + r, :k] = lp[r, w - k:]
                mask[s + r, :k] = True
                ids_out[s + r, :k] = target[r, w - k:]
        return TokenLogprobs(lps, mask, ids_out)


# ---------------------------------------------------------------------------------------------- weights

def read_language_model(path: str, config) -> dict[str, torch.Tensor]:
    """The language model's tensors from model.safetensors (or its shards), checked against checkpoint_keys."""
    import json

    from safetensors.torch import load_file

    index = os.path.join(path, "model.safetensors.index.json")
    files = ["model.safetensors"]
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not os.path.exists(os.path.join(path, name)):
            raise CheckpointError(f"{path}: weight shard {name} is missing")
        state.update(load_file(os.path.join(path, name)))
    want = set(checkpoint_keys(config))
    missing = sorted(want - state.keys())
    if missing:
        raise CheckpointError(f"{path}: {len(missing)} X-Omni weights are missing (e.g. {missing[0]}): it is not a "
                              "complete X-Omni language model")
    return {k: v for k, v in state.items() if k in want}


def load_image_tokenizer(path: str, encoder: dict) -> SiglipVQ:
    """SigLIP-VQ from X-Omni's two weight files (timm ViT, projector)."""
    vq = SiglipVQ(TokenizerConfig.from_encoder(encoder))
    vit = torch.load(os.path.join(path, encoder["siglip_path"]), map_location="cpu", weights_only=True)
    projector = torch.load(os.path.join(path, encoder["projector_path"]), map_location="cpu", weights_only=True)
    missing, _ = vq.load_state_dict({**vit_state_from_timm(vit), **projector}, strict=False)
    if missing:
        raise CheckpointError(f"{path}: the image tokenizer's weights lack {len(missing)} tensors (e.g. {missing[0]})")
    return vq
