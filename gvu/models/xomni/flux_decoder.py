"""X-Omni's pixel decoder: FLUX.1-dev (through diffusers) conditioned on the prompt and on SigLIP features.

X-Omni's FluxTransformer2DModelWithSigLIP adds `siglip_embed(features)` (a bias-free linear map, SigLIP width ->
FLUX width) to the image tokens after the dual-stream blocks, before the single-stream ones. Here that one addition is
a forward hook on the last dual-stream block (`SiglipConditioning`), so diffusers' own forward runs unchanged and a
diffusers upgrade cannot silently drift from a copy of it.

Sampling follows X-Omni's FluxPipelineWithSigLIP: sigmas linspace(1, 1/n, n) with the resolution shift mu, FLUX's
distilled guidance embedding at `guidance_scale` (1.0), and true classifier-free guidance against an empty prompt
with zero SigLIP input: v = v_neg + s (v_pos - v_neg). Row i starts from noise drawn from its own seed, so a row
decodes alike in any batch.

Letters: M rows, N = h*w image tokens (= FLUX's packed latent tokens), z SigLIP width, H/W pixels.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

EXTRA_HINT = "pip install 'gvu[xomni]' (it adds diffusers)"


@dataclass(frozen=True)
class DecoderConfig:
    """X-Omni's vision_config.decoder (the checkpoint's config.json holds the real values)."""

    model_path: str = "decoder"  # the X-Omni folder's subfolder holding its FLUX transformer (with siglip_embed)
    upscale_factor: int = 16  # pixels per image token per side: 36 tokens -> 576 px
    num_inference_steps: int = 28
    cfg_scale: float = 1.0  # true CFG against the empty prompt and zero SigLIP input; 1 turns it off
    guidance_scale: float = 1.0  # FLUX-dev's distilled guidance embedding (X-Omni passes 1.0)
    max_sequence_length: int = 512  # T5 tokens of the prompt
    decode_batch: int = 4  # rows denoised at once (memory bound)

    @staticmethod
    def from_decoder(decoder: dict) -> DecoderConfig:
        known = set(DecoderConfig.__dataclass_fields__)
        return DecoderConfig(**{k: v for k, v in decoder.items() if k in known})


def import_diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(f"X-Omni decodes images with FLUX.1-dev through diffusers, which is not installed: "
                          f"{EXTRA_HINT}") from e
    return diffusers


class SiglipConditioning(nn.Module):
    """siglip_embed, and a hook that adds it to the image tokens leaving the transformer's last dual-stream block.

    Set `features` [2M or M, N, z] before a transformer call (in `conditioned`); None adds nothing."""

    def __init__(self, siglip_channels: int, inner_dim: int):
        super().__init__()
        self.siglip_embed = nn.Linear(siglip_channels, inner_dim, bias=False)
        self.features: torch.Tensor | None = None

    def attach(self, transformer) -> None:
        transformer.transformer_blocks[-1].register_forward_hook(self._add)

    def _add(self, module, args, output):
        if self.features is None:
            return output
        encoder_hidden, hidden = output
        return encoder_hidden, hidden + self.siglip_embed(self.features.to(hidden.dtype))

    @contextlib.contextmanager
    def conditioned(self, features: torch.Tensor):
        self.features = features
        try:
            yield
        finally:
            self.features = None


def check_flux_dir(flux_dir: str | None) -> str:
    """The FLUX.1-dev folder, checked without loading: an error names the extra and the folder."""
    import_diffusers()
    if not flux_dir:
        raise ValueError("X-Omni needs FLUX.1-dev to decode images, and no folder was given: download "
                         "black-forest-labs/FLUX.1-dev (gated: accept its licence on the hub first) and set "
                         "flux_dir in the X-Omni folder's gvu_backend.json (or the GVU_FLUX_DIR environment variable)")
    if not os.path.exists(os.path.join(flux_dir, "model_index.json")):
        raise ValueError(f"no FLUX.1-dev pipeline at {flux_dir} (no model_index.json there): download "
                         "black-forest-labs/FLUX.1-dev (gated: accept its licence on the hub first), pass its folder "
                         f"as flux_dir, and install the decoder's extra ({EXTRA_HINT})")
    return flux_dir


class FluxDecoder(nn.Module):
    """Diffusers' FLUX pipeline parts (text encoders, VAE, scheduler) with X-Omni's transformer and siglip_embed."""

    def __init__(self, pipe, conditioning: SiglipConditioning, config: DecoderConfig):
        super().__init__()
        self.pipe, self.config = pipe, config
        self.conditioning = conditioning
        self.transformer = pipe.transformer  # registered, so .to() moves it (the pipe's other parts move below)
        conditioning.attach(pipe.transformer)

    @staticmethod
    def load(flux_dir: str, xomni_dir: str, config: DecoderConfig, siglip_channels: int,
             dtype: torch.dtype, device: str | torch.device) -> FluxDecoder:
        """FLUX.1-dev's text encoders, VAE and scheduler from flux_dir; X-Omni's transformer from
        xomni_dir/config.model_path (FLUX weights plus siglip_embed.weight)."""
        diffusers = import_diffusers()
        check_flux_dir(flux_dir)
        sub = os.path.join(xomni_dir, config.model_path)
        if not os.path.isdir(sub):
            raise ValueError(f"{xomni_dir} has no {config.model_path}/ folder (X-Omni's FLUX transformer): is it a "
                             "complete X-Omni checkpoint?")
        transformer = diffusers.FluxTransformer2DModel.from_pretrained(sub, torch_dtype=dtype)
        conditioning = SiglipConditioning(siglip_channels, transformer.inner_dim)
        conditioning.siglip_embed.weight.data.copy_(read_tensor(sub, "siglip_embed.weight"))
        pipe = diffusers.FluxPipeline.from_pretrained(flux_dir, transformer=transformer, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return FluxDecoder(pipe, conditioning.to(dtype), config).to_device(device)

    def to_device(self, device) -> FluxDecoder:
        self.pipe.to(device)
        self.conditioning.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.pipe.transformer.device

    def noise(self, seeds: torch.Tensor, height: int, width: int, dtype: torch.dtype):
        """Packed noise latents [M, N, 4c] and their position ids, row i from its own CPU generator (seeds[i])."""
        channels = self.pipe.transformer.config.in_channels // 4
        rows = [self.pipe.prepare_latents(1, channels, height, width, dtype, self.device,
                                          torch.Generator("cpu").manual_seed(int(s))) for s in seeds]
        return torch.cat([r[0] for r in rows]), rows[0][1]

    @torch.no_grad()
    def decode(self, features: torch.Tensor, prompts: list[str], seeds: torch.Tensor, side: int,
               latents: torch.Tensor | None = None) -> torch.Tensor:
        """features [M, N, z], M prompts, seeds [M] -> pixels [M, 3, side, side] in [-1, 1], decode_batch rows at
        a time. latents [M, N, 4c] (optional): the packed starting noise itself, instead of drawing it from seeds."""
        b = self.config.decode_batch
        out = [self._decode(features[s:s + b], prompts[s:s + b], seeds[s:s + b], side,
                            None if latents is None else latents[s:s + b])
               for s in range(0, len(prompts), b)]
        return torch.cat(out)

    def _decode(self, features, prompts, seeds, side, latents=None):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        pipe, cfg = self.pipe, self.config
        dtype = pipe.transformer.dtype
        embeds, pooled, text_ids = pipe.encode_prompt(prompts, device=self.device,
                                                      max_sequence_length=cfg.max_sequence_length)
        if latents is None:
            latents, image_ids = self.noise(seeds, side, side, dtype)
        else:
            channels = pipe.transformer.config.in_channels // 4
            latents, image_ids = pipe.prepare_latents(len(prompts), channels, side, side, dtype, self.device, None,
                                                      latents.to(self.device, dtype))
        if latents.shape[1] != features.shape[1]:
            raise ValueError(f"{features.shape[1]} image tokens but {latents.shape[1]} FLUX latent tokens at "
                             f"{side} px: the decoder's upscale_factor does not fit this image size")
        guided = cfg.cfg_scale > 1
        features = features.to(self.device, dtype)
        if guided:  # [conditional rows; unconditional rows], as X-Omni's pipeline batches them
            neg, neg_pooled, _ = pipe.encode_prompt([""], device=self.device,
                                                    max_sequence_length=cfg.max_sequence_length)
            embeds = torch.cat([embeds, neg.expand_as(embeds)])
            pooled = torch.cat([pooled, neg_pooled.expand_as(pooled)])
            features = torch.cat([features, torch.zeros_like(features)])
        rows = embeds.shape[0]
        n = cfg.num_inference_steps
        sched = pipe.scheduler.config
        mu = calculate_shift(latents.shape[1], sched.get("base_image_seq_len", 256), sched.get("max_image_seq_len", 4096),
                             sched.get("base_shift", 0.5), sched.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(pipe.scheduler, n, self.device, sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
        guidance = (torch.full((rows,), cfg.guidance_scale, device=self.device, dtype=torch.float32)
                    if pipe.transformer.config.guidance_embeds else None)
        with self.conditioning.conditioned(features):
            for t in timesteps:
                x = torch.cat([latents, latents]) if guided else latents
                v = pipe.transformer(hidden_states=x, timestep=t.expand(rows).to(dtype) / 1000, guidance=guidance,
                                     pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                                     img_ids=image_ids, return_dict=False)[0]
                if guided:
                    v_pos, v_neg = v.chunk(2)
                    v = v_neg + cfg.cfg_scale * (v_pos - v_neg)
                latents = pipe.scheduler.step(v, t, latents, return_dict=False)[0]
        latents = pipe._unpack_latents(latents, side, side, pipe.vae_scale_factor)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        return pipe.vae.decode(latents.to(pipe.vae.dtype), return_dict=False)[0].float().clamp(-1, 1)


def read_tensor(folder: str, name: str) -> torch.Tensor:
    """One tensor from a folder of safetensors files (X-Omni's decoder/ holds siglip_embed.weight among FLUX's)."""
    from safetensors import safe_open

    for f in sorted(os.listdir(folder)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(folder, f), framework="pt") as st:
                if name in st.keys():  # noqa: SIM118 (safe_open is not a dict)
                    return st.get_tensor(name)
    raise ValueError(f"{folder} holds no {name}: it is not X-Omni's SigLIP-conditioned FLUX transformer")
