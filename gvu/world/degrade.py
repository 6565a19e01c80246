"""Corruptions that a generated image carries and a clean rendering does not: blur, colour noise, JPEG
artefacts and stray specks. Used to measure (benchmarks/evaluator_accuracy.py) and test the evaluator's
tolerance; the defaults are the strength the README's accuracy table reports.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from gvu.world.vocab import COLORS


@dataclass(frozen=True)
class Degradation:
    """Applied in this order: blur, noise, JPEG, specks (last, so the specks stay sharp: the hard case)."""

    blur_sigma: float = 0.6  # Gaussian blur, in pixels (0: none)
    noise_std: float = 6.0  # Gaussian noise per channel on the 0..255 scale (0: none)
    jpeg_quality: int = 85  # re-encode as JPEG at this quality (0: none)
    specks: int = 3  # single pixels set to random palette colours at random places


def degrade(image: Image.Image, rng: np.random.Generator, d: Degradation = Degradation()) -> Image.Image:
    """A degraded copy of an RGB image [H, W, 3]; deterministic given the rng's state."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    if d.blur_sigma > 0:
        arr = ndimage.gaussian_filter(arr, sigma=(d.blur_sigma, d.blur_sigma, 0))
    if d.noise_std > 0:
        arr = arr + rng.normal(0.0, d.noise_std, arr.shape)
    out = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))
    if d.jpeg_quality > 0:
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=d.jpeg_quality)
        out = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if d.specks > 0:
        arr = np.array(out)
        palette = list(COLORS.values())
        h, w, _ = arr.shape
        for _ in range(d.specks):
            arr[rng.integers(h), rng.integers(w)] = palette[rng.integers(len(palette))]
        out = Image.fromarray(arr)
    return out
