"""GenEval's object detector on transformers: Mask2Former (Swin-S, COCO instances), with mmdet 2's test-time
preprocessing and instance post-processing.

What GenEval runs (mmdet 2.x, config mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco, `inference_detector`):
- LoadImageFromFile: OpenCV reads the file, honouring EXIF orientation; the image is used at its own size.
- Resize keep_ratio to fit (1333, 800): factor = min(1333 / long side, 800 / short side); new side =
  int(side x factor + 0.5); bilinear (cv2.INTER_LINEAR, no antialiasing), back to uint8.
- Normalize: RGB, mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375); Pad bottom/right with 0 to a
  multiple of 32.
- Mask2FormerHead: mask logits (1/4 of the padded input) upsampled bilinearly to the padded input; the padding
  cropped off; upsampled bilinearly to the original image size (rescale=True).
- MaskFormerFusionHead.instance_postprocess: softmax over the classes and no-object, no-object dropped; the top
  100 (query, class) pairs by class probability; mask = logit > 0; score = class probability x mean sigmoid
  inside the mask (sum / (area + 1e-6)); box = the mask's tight box (x0, y0, x_last + 1, y_last + 1), zeros
  for an empty mask (mmdet's mask2bbox).

We do not use transformers' Mask2FormerImageProcessor.post_process_instance_segmentation: it resizes the masks
to a fixed target size in one step from the padded 1/4-resolution logits (so the padding is not cropped first),
binarises the sigmoid at 0.5 after a different score filter (threshold 0.5 on the class score), and can make the
masks non-overlapping (each pixel to one instance), none of which GenEval does; its boxes and scores would differ.

The resize runs in torch (bilinear, half-pixel centres, like cv2.INTER_LINEAR) and rounds to uint8 as cv2 does;
OpenCV's fixed-point arithmetic can differ by one grey level on some pixels.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from gvu.errors import UserError
from gvu.eval.geneval.rules import Detection

MMDET_SCALE = (1333, 800)
MMDET_MEAN = (123.675, 116.28, 103.53)
MMDET_STD = (58.395, 57.12, 57.375)
PAD_DIVISOR = 32
MAX_PER_IMAGE = 100
OFFICIAL_SHA256_PREFIX = "743b7d99"  # mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco_20220504_001756-743b7d99.pth

# Other spellings of COCO's classes -> GenEval's names: GenEval's object_names.txt renames three of the usual
# names (detectron2's and mmdet's, which facebook/mask2former-*-coco-instance carry); the rest are older
# (PASCAL-style) spellings some label files use. Labels are matched by name, so their order does not matter.
COCO_ALIASES = {"mouse": "computer mouse", "remote": "tv remote", "keyboard": "computer keyboard",
                "motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "tvmonitor": "tv",
                "diningtable": "dining table", "pottedplant": "potted plant", "hair dryer": "hair drier"}


@dataclass(frozen=True)
class DetectorInfo:
    """What a detector directory is, read from its config.json before any weights are loaded."""

    path: Path
    class_names: tuple[str, ...]  # label index -> GenEval class name (80)
    official: bool  # converted from GenEval's own mmdet checkpoint (by `gvu convert geneval-detector`)
    source: str  # one line for the summary: where the weights come from


def load_image(path: str | Path) -> Image.Image:
    """The image as GenEval's detector and colour crops see it: EXIF orientation applied, RGB."""
    with Image.open(path) as im:
        return ImageOps.exif_transpose(im).convert("RGB")


def inspect_detector_dir(path: str | Path, geneval_names: frozenset[str]) -> DetectorInfo:
    """Check that `path` holds a transformers Mask2Former with GenEval's 80 COCO classes; UserError if not."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"--detector {path}: no config.json; expected a transformers Mask2Former directory "
                        f"(`gvu convert geneval-detector` writes one; see docs/geneval.md)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{cfg_path}: unreadable config ({e})") from None
    if cfg.get("model_type") != "mask2former":
        raise UserError(f"--detector {path}: model_type is {cfg.get('model_type')!r}, not 'mask2former'; GenEval "
                        f"needs Mask2Former (COCO instance segmentation), see docs/geneval.md")
    id2label = cfg.get("id2label") or {}
    labels = [id2label.get(str(i)) for i in range(len(id2label))]
    names = [COCO_ALIASES.get(x, x) for x in labels]
    if len(names) != 80 or set(names) != geneval_names:
        odd = sorted(set(x for x in names if x not in geneval_names), key=str)[:5]
        raise UserError(f"--detector {path}: its {len(names)} classes are not GenEval's 80 COCO classes"
                        + (f" (e.g. {', '.join(map(repr, odd))})" if odd else "")
                        + "; use a COCO instance-segmentation Mask2Former (see docs/geneval.md)")
    src = cfg.get("gvu_source") or {}
    official = str(src.get("sha256", "")).startswith(OFFICIAL_SHA256_PREFIX)
    if official:
        source = f"GenEval's own detector ({src.get('checkpoint')}, converted by gvu)"
    elif src:
        source = (f"converted from {src.get('checkpoint')} (sha256 {str(src.get('sha256'))[:8]}), which is not "
                  f"GenEval's checkpoint: scores come from another detector")
    else:
        source = (f"{cfg.get('_name_or_path') or path} (not GenEval's mmdet checkpoint: scores come from another "
                  f"detector and may differ from the official GenEval scorer's)")
    return DetectorInfo(path, tuple(names), official, source)


def resized_shape(height: int, width: int, scale: tuple[int, int] = MMDET_SCALE) -> tuple[int, int]:
    """mmcv.imrescale's size: the largest keep-ratio size within (long, short) = scale, rounded half up."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def preprocess(images: list[Image.Image]) -> tuple[torch.Tensor, tuple[int, int]]:
    """B same-size RGB images -> (pixel_values [B, 3, Hp, Wp] normalised and zero-padded to a multiple of 32,
    the resized size (h, w) before padding)."""
    sizes = {im.size for im in images}
    assert len(sizes) == 1, f"one batch, one image size (got {sizes})"
    width, height = images[0].size
    h, w = resized_shape(height, width)
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8) for im in images])).permute(0, 3, 1, 2).float()
    if (h, w) != (height, width):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False).round().clamp(0, 255)
    mean = torch.tensor(MMDET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(MMDET_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    hp, wp = -(-h // PAD_DIVISOR) * PAD_DIVISOR, -(-w // PAD_DIVISOR) * PAD_DIVISOR
    return F.pad(x, (0, wp - w, 0, hp - h)), (h, w)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """mmdet's mask2bbox: bool [N, H, W] -> [N, 4] float (x0, y0, x_last + 1, y_last + 1); zeros when empty."""
    boxes = torch.zeros(masks.shape[0], 4)
    cols, rows = masks.any(dim=1), masks.any(dim=2)  # [N, W], [N, H]
    for i in range(masks.shape[0]):
        xs, ys = torch.where(cols[i])[0], torch.where(rows[i])[0]
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


def instances(class_logits: torch.Tensor, mask_logits: torch.Tensor, resized: tuple[int, int],
              original: tuple[int, int], class_names: tuple[str, ...], min_score: float | None = None,
              chunk: int = 20) -> dict[str, list[Detection]]:
    """One image's instances, as mmdet 2's Mask2Former returns them (see the module docstring).

    class_logits [Q, K + 1] (last: no-object); mask_logits [Q, h4, w4] at a quarter of the padded input;
    resized (h, w): the image inside the padding; original (H, W). All 100 are returned, or with min_score
    only those scoring above it (GenEval's lowest threshold is a strict 0.3: passing it saves memory)."""
    num_classes = class_logits.shape[-1] - 1
    probs = class_logits.float().softmax(-1)[:, :-1]  # [Q, K]
    k = min(MAX_PER_IMAGE, probs.numel())
    top_probs, top = probs.flatten().topk(k)
    labels, queries = top % num_classes, top // num_classes
    padded = (mask_logits.shape[-2] * 4, mask_logits.shape[-1] * 4)
    out: dict[str, list[Detection]] = {}
    unique = queries.unique().tolist()
    for start in range(0, len(unique), chunk):  # upsample a few queries at a time: [chunk, H, W] floats at most
        qs = unique[start:start + chunk]
        m = F.interpolate(mask_logits[qs][:, None].float(), size=padded, mode="bilinear", align_corners=False)
        m = m[:, :, :resized[0], :resized[1]]
        m = F.interpolate(m, size=original, mode="bilinear", align_corners=False)[:, 0]  # [q, H, W]
        binary = m > 0
        area = binary.flatten(1).sum(1).float()
        mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (area + 1e-6)  # [q]
        boxes = mask_boxes(binary.cpu())
        for row, q in enumerate(qs):
            for j in torch.where(queries == q)[0].tolist():
                score = float(top_probs[j] * mask_score[row])
                if min_score is not None and score <= min_score:
                    continue
                name = class_names[int(labels[j])]
                out.setdefault(name, []).append(Detection(score, tuple(boxes[row].tolist()),
                                                          binary[row].cpu().numpy()))
    return out


class Mask2FormerDetector:
    """A transformers Mask2Former directory, run as GenEval's detector."""

    def __init__(self, info: DetectorInfo, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import Mask2FormerForUniversalSegmentation

        self.info = info
        self.device = device
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(str(info.path), dtype=dtype)
        self.model.to(device).eval()
        self.dtype = dtype

    @torch.no_grad()
    def detect(self, images: list[Image.Image], min_score: float | None = None) -> list[dict[str, list[Detection]]]:
        """B same-size images -> per image {GenEval class name: detections}."""
        pixels, resized = preprocess(images)
        out = self.model(pixel_values=pixels.to(self.device, self.dtype))
        height, width = images[0].size[1], images[0].size[0]
        return [instances(out.class_queries_logits[b], out.masks_queries_logits[b], resized, (height, width),
                          self.info.class_names, min_score) for b in range(len(images))]
