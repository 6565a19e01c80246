"""X-Omni backend settings and checkpoint checks (no weights are read here).

An X-Omni folder holds config.json (model_type "x-omni", Qwen2 fields, X-Omni's mm fields and a vision_config with
transform / encoder / decoder sections), the language model's safetensors, the tokenizer, the SigLIP ViT and
projector weights (vision_config.encoder.siglip_path / projector_path) and the FLUX transformer subfolder
(vision_config.decoder.model_path). FLUX.1-dev's own parts (text encoders, VAE, scheduler) live in a separate folder,
`flux_dir`: from the X-Omni folder's optional gvu_backend.json, else the GVU_FLUX_DIR environment variable.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

BACKEND_FILE = "gvu_backend.json"
MODEL_TYPE = "x-omni"
FLUX_ENV = "GVU_FLUX_DIR"


class CheckpointError(ValueError):
    """A folder gvu cannot load as X-Omni; the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class XOmniBackendConfig:
    """X-Omni-specific numbers, with the official GvU settings as defaults (matrix0721/GvU omni_r1)."""

    image_size: int = 576  # decoded side in pixels (official GvU: 576 -> 36 x 36 = 1,296 image tokens)
    downsample: int = 16  # pixels per image token per side (the SigLIP patch and FLUX's upscale factor)
    image_prefix: str = "<SOM>{h} {w}<IMAGE>"  # appended to the raw prompt (no chat template), as the official code does
    image_suffix: str = "<EOM>"  # closes an image in the understanding prompt
    image_token: str = "<MM-Token-{code}>"  # the tokenizer's text for image code k (its id is vocab_size + k)
    default_cfg_scale: float = 1.0  # the official setting: no classifier-free guidance (sampling.guidance false)
    transform_short_size: int = 384  # understanding re-reads images at a side in [short, long] (X-Omni's anyres transform)
    transform_long_size: int = 1152
    text_batch_size: int = 16  # rows per teacher-forced understanding pass (memory bound)
    flux_dir: str | None = None  # FLUX.1-dev's folder (None: the GVU_FLUX_DIR environment variable)

    def __post_init__(self):
        if self.downsample < 1 or self.image_size < self.downsample or self.image_size % self.downsample:
            raise CheckpointError(f"image_size {self.image_size} is not a multiple of the {self.downsample}-pixel "
                                  f"token grid: pick a multiple of {self.downsample} (the official setting is 576)")

    @property
    def grid(self) -> int:
        """Image tokens per side (36 for 576 px)."""
        return self.image_size // self.downsample

    def understanding_side(self) -> int:
        """The side at which understanding re-tokenises a decoded square image: X-Omni's anyres transform scales
        the short side up to transform_short_size, the long side down to transform_long_size, and rounds to the
        patch."""
        side = min(max(self.image_size, self.transform_short_size), self.transform_long_size)
        return max(1, round(side / self.downsample)) * self.downsample

    @staticmethod
    def load(model_dir: str, config: dict | None = None, **overrides) -> XOmniBackendConfig:
        """Defaults, then the checkpoint's vision_config.transform, then gvu_backend.json, then overrides."""
        values: dict = {}
        transform = ((config or {}).get("vision_config") or {}).get("transform") or {}
        for ours, theirs in (("transform_short_size", "short_size"), ("transform_long_size", "long_size")):
            if theirs in transform:
                values[ours] = transform[theirs]
        path = os.path.join(model_dir, BACKEND_FILE)
        if os.path.exists(path):
            with open(path) as f:
                values.update(json.load(f))
        values.update(overrides)
        if values.get("flux_dir") is None and os.environ.get(FLUX_ENV):
            values["flux_dir"] = os.environ[FLUX_ENV]
        return XOmniBackendConfig(**values)

    def save(self, model_dir: str) -> None:
        with open(os.path.join(model_dir, BACKEND_FILE), "w") as f:
            json.dump(asdict(self), f, indent=2)


def check_checkpoint(path: str) -> dict:
    """Check an X-Omni folder's files without reading weights; return its config.json. Raises CheckpointError."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{path} has no config.json: it is not an X-Omni checkpoint folder")
    with open(cfg_path) as f:
        cfg = json.load(f)
    if cfg.get("model_type") != MODEL_TYPE:
        raise CheckpointError(f"{path} holds model_type {cfg.get('model_type')!r}, not X-Omni ({MODEL_TYPE!r}): give "
                              "an X-Omni folder such as X-Omni/X-Omni-En")
    for key in ("vocab_size", "mm_vocab_size", "image_vocab_size", "vision_config"):
        if key not in cfg:
            raise CheckpointError(f"{path}/config.json has no {key}: it is not a complete X-Omni config")
    if not any(os.path.exists(os.path.join(path, f)) for f in ("model.safetensors", "model.safetensors.index.json")):
        raise CheckpointError(f"{path} has no language-model weights (model.safetensors or its index)")
    if not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise CheckpointError(f"{path} has no tokenizer.json: copy X-Omni's tokenizer files into it")
    encoder = cfg["vision_config"].get("encoder", {})
    for key in ("siglip_path", "projector_path"):
        if not encoder.get(key) or not os.path.exists(os.path.join(path, encoder[key])):
            raise CheckpointError(f"{path}: the image tokenizer's {key} ({encoder.get(key)!r}) is missing: download "
                                  "the whole X-Omni folder")
    return cfg
