"""GenEval's colour classifier on transformers: CLIP ViT-L/14 zero-shot among GenEval's 10 colours.

As evaluate_images.py does it (open_clip "ViT-L-14" pretrained="openai", clip_benchmark's zero-shot classifier):
- crop: the image composited over a #999999 grey background through the object's mask, then cropped to the
  object's box (PIL's crop);
- CLIP's eval transform: resize the short side to 224 (bicubic), centre-crop 224, scale to [0, 1], normalise
  with OpenAI's mean and std;
- class weights: for each colour c, the three prompts "a photo of a {c} {object}", "a photo of a {c}-colored
  {object}", "a photo of a {c} object" are embedded, each embedding L2-normalised, averaged, and normalised
  again; one weight matrix per object class, cached;
- prediction: argmax over colours of the normalised image embedding . weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gvu.errors import UserError
from gvu.eval.geneval.rules import COLORS, Detection

BACKGROUND = "#999999"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def templates(object_name: str) -> list[str]:
    return [f"a photo of a {{c}} {object_name}", f"a photo of a {{c}}-colored {object_name}", "a photo of a {c} object"]


def object_crop(image: Image.Image, det: Detection) -> Image.Image:
    """The object alone on grey (#999999) through its mask, cropped to its box."""
    assert det.mask is not None and det.mask.shape == (image.height, image.width), "mask must match the image"
    blank = Image.new("RGB", image.size, BACKGROUND)
    composed = Image.composite(image, blank, Image.fromarray(det.mask))
    return composed.crop(tuple(det.box))


def clip_pixels(crops: list[Image.Image], size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """open_clip's eval transform: [N, 3, size, size]."""
    out = []
    for im in crops:
        w, h = im.size
        if w <= h:  # torchvision Resize(int): the short side to `size`, the long side truncated
            nw, nh = size, int(size * h / w)
        else:
            nw, nh = int(size * w / h), size
        im = im.convert("RGB").resize((nw, nh), Image.BICUBIC)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        im = im.crop((left, top, left + size, top + size))
        out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    x = torch.stack(out)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _features(output) -> torch.Tensor:
    """get_*_features returns a tensor in some transformers versions and an output with pooler_output in others."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def check_clip_dir(path: str | Path) -> Path:
    path = Path(path)
    cfg = path / "config.json"
    if not cfg.is_file():
        raise UserError(f"--clip {path}: no config.json; expected a transformers CLIP directory such as "
                        f"openai/clip-vit-large-patch14 (see docs/geneval.md)")
    try:
        model_type = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg}: unreadable config ({e})") from None
    if model_type != "clip":
        raise UserError(f"--clip {path}: model_type is {model_type!r}, not 'clip' (GenEval uses CLIP ViT-L/14)")
    return path


class ClipColorClassifier:
    """CLIPModel + its tokenizer from a local directory, classifying object crops among GenEval's colours."""

    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, CLIPModel

        path = check_clip_dir(path)
        self.model = CLIPModel.from_pretrained(str(path), dtype=dtype).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.device, self.dtype = device, dtype
        self.size = self.model.config.vision_config.image_size
        self.mean, self.std = OPENAI_MEAN, OPENAI_STD
        proc = path / "preprocessor_config.json"
        if proc.is_file():  # the directory's own normalisation when it states one (OpenAI's for CLIP ViT-L/14)
            p = json.loads(proc.read_text(encoding="utf-8"))
            self.mean, self.std = tuple(p.get("image_mean", self.mean)), tuple(p.get("image_std", self.std))
        self._weights: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def class_weights(self, object_name: str) -> torch.Tensor:
        """[D, 10]: one unit column per colour (clip_benchmark's zero_shot_classifier)."""
        if object_name not in self._weights:
            columns = []
            for c in COLORS:
                texts = [t.format(c=c) for t in templates(object_name)]
                tok = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
                emb = _features(self.model.get_text_features(**tok)).float()
                emb = torch.nn.functional.normalize(emb, dim=-1).mean(0)
                columns.append(emb / emb.norm())
            self._weights[object_name] = torch.stack(columns, dim=1)
        return self._weights[object_name]

    @torch.no_grad()
    def classify(self, image: Image.Image, object_name: str, objects: list[Detection]) -> list[str]:
        """One colour name per object."""
        if not objects:
            return []
        pixels = clip_pixels([object_crop(image, d) for d in objects], self.size, self.mean, self.std)
        feats = _features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype))).float()
        logits = 100.0 * torch.nn.functional.normalize(feats, dim=-1) @ self.class_weights(object_name)
        return [COLORS[i] for i in logits.argmax(1).tolist()]
