"""X-Omni's image tokenizer: a SigLIP2 ViT, a 1x1 conv projector and an L2-normalised codebook.

encode: pixels [M, 3, H, W] -> codes [M, h, w] (h = H / patch): the ViT's last-layer patch features (no final norm),
`quant_conv` (1x1) to the codebook width, then the nearest codebook entry by cosine (X-Omni's IBQ quantiser
normalises both sides and takes the smallest squared distance, which is the largest cosine).
decode: codes [M, h, w] -> SigLIP-space features [M, h*w, z] for the FLUX decoder: the raw codebook rows,
`post_quant_conv` (1x1) and `post_conv` (residual conv blocks).

The ViT is transformers' SiglipEncoder (SDPA attention) behind X-Omni's own patch embedding: a learned position table
for a 128 x 128 patch grid, resized bilinearly to the image's grid. X-Omni ships the ViT as timm weights
(`blocks.N.attn.qkv`, ...); `vit_state_from_timm` renames them, splitting the fused qkv. The projector's keys
(quant_conv, quantize.embedding, post_quant_conv, post_conv) are this module's own names.

Letters: M images, h/w patch grid, D ViT width, E codebook width, z projector channels, S codebook size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SiglipVisionConfig
from transformers.models.siglip.modeling_siglip import SiglipEncoder

# X-Omni's named ViTs (its modeling_vit.py table): width, layers, heads, mlp ratio
VIT_PRESETS = {
    "siglip2_giant_patch16_384": {"width": 1536, "layers": 40, "heads": 16, "mlp_ratio": 4.0},
    "siglip_so400m_patch16_384": {"width": 1152, "layers": 27, "heads": 16, "mlp_ratio": 3.7362},
}


@dataclass(frozen=True)
class TokenizerConfig:
    """Sizes of the SigLIP-VQ tokenizer (X-Omni's vision_config.encoder; a "vit" dict there overrides the preset,
    which is how tiny test models are described)."""

    width: int = 1536  # D
    layers: int = 40
    heads: int = 16
    mlp_ratio: float = 4.0
    patch_size: int = 16
    pos_grid: int = 128  # the position table's side: X-Omni builds the ViT for 2048 px at patch 16
    z_channels: int = 1536  # z
    codebook_size: int = 16384  # S
    codebook_dim: int = 2048  # E
    conv_layers: int = 2  # residual blocks in post_conv

    @staticmethod
    def from_encoder(encoder: dict) -> TokenizerConfig:
        vit = dict(VIT_PRESETS.get(encoder.get("siglip_name", ""), {}))
        vit.update(encoder.get("vit", {}))
        sizes = {k: encoder[k] for k in ("z_channels", "codebook_size", "codebook_dim") if k in encoder}
        return TokenizerConfig(**vit, **sizes)


class PatchEmbedding(nn.Module):
    """Conv patches plus a learned position table resized (bilinear) to the image's patch grid."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, cfg.patch_size, stride=cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid ** 2, cfg.width))
        self.pos_grid = cfg.pos_grid

    def positions(self, h: int, w: int) -> torch.Tensor:
        """[1, h*w, D]: the table as is for its own grid, else resized with bilinear interpolation (align_corners
        False), as X-Omni's rescale_positional_embedding does."""
        if (h, w) == (self.pos_grid, self.pos_grid):
            return self.pos_embed
        grid = self.pos_embed[0].T.reshape(1, -1, self.pos_grid, self.pos_grid)
        return F.interpolate(grid, (h, w), mode="bilinear", align_corners=False).reshape(-1, h * w).T[None]

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(pixels)  # [M, D, h, w]
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2) + self.positions(h, w), h, w


class ResidualBlock(nn.Module):
    """GroupNorm -> GELU -> 3x3 conv, twice, plus the input (X-Omni's projector block)."""

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.gelu(self.norm1(x)))
        return x + self.conv2(F.gelu(self.norm2(h)))


class Codebook(nn.Module):
    """The quantiser: `embedding` holds S codes of width E (the checkpoint's quantize.embedding.weight)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.embedding = nn.Embedding(size, dim)

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """z [..., E] -> the index of the code with the largest cosine similarity [...]."""
        return (F.normalize(z, dim=-1) @ F.normalize(self.embedding.weight, dim=-1).T).argmax(-1)


class SiglipVQ(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        vit = SiglipVisionConfig(hidden_size=cfg.width, intermediate_size=int(cfg.width * cfg.mlp_ratio),
                                 num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, hidden_act="gelu",
                                 layer_norm_eps=1e-6, patch_size=cfg.patch_size)
        vit._attn_implementation = "sdpa"
        self.embeddings = PatchEmbedding(cfg)
        self.encoder = SiglipEncoder(vit)
        self.quant_conv = nn.Conv2d(cfg.width, cfg.codebook_dim, 1)
        self.quantize = Codebook(cfg.codebook_size, cfg.codebook_dim)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_dim, cfg.z_channels, 1)
        self.post_conv = nn.Sequential(*[ResidualBlock(cfg.z_channels) for _ in range(cfg.conv_layers)])

    def features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """pixels [M, 3, H, W] (normalised to [-1, 1]) -> ViT features [M, h*w, D], h, w."""
        x, h, w = self.embeddings(pixels)
        return self.encoder(inputs_embeds=x).last_hidden_state, h, w

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [M, 3, H, W] in [-1, 1], H and W multiples of the patch -> codes [M, h, w] long."""
        p = self.cfg.patch_size
        if pixels.shape[-1] % p or pixels.shape[-2] % p:
            raise ValueError(f"images must be a multiple of the {p}-pixel patch on each side, got "
                             f"{pixels.shape[-2]}x{pixels.shape[-1]}")
        x, h, w = self.features(pixels)
        z = self.quant_conv(x.transpose(1, 2).reshape(x.shape[0], -1, h, w))  # [M, E, h, w]
        return self.quantize.nearest(z.permute(0, 2, 3, 1))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [M, h, w] -> features [M, h*w, z] (row-major over the grid, as FLUX's packed latents are)."""
        z = self.quantize.embedding(codes).permute(0, 3, 1, 2)  # [M, E, h, w]: the raw rows, as X-Omni decodes
        z = self.post_conv(self.post_quant_conv(z))
        return z.flatten(2).transpose(1, 2)


def vit_state_from_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """X-Omni's timm ViT weights -> this module's names (embeddings.*, encoder.layers.N.*). Keys the ViT does not
    use (a pooling head, a final norm) are dropped, as X-Omni loads them with strict=False."""
    out = {}
    renames = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.proj": "self_attn.out_proj",
               "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for key, value in state.items():
        if key.startswith("patch_embed.proj."):
            out["embeddings.proj." + key.rsplit(".", 1)[1]] = value
        elif key == "pos_embed":
            out["embeddings.pos_embed"] = value
        elif key.startswith("blocks."):
            _, index, rest = key.split(".", 2)
            prefix = f"encoder.layers.{index}."
            module, kind = rest.rsplit(".", 1)
            if module == "attn.qkv":
                for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part
            elif module in renames:
                out[f"{prefix}{renames[module]}.{kind}"] = value
    return out
