"""The exact evaluator: image -> detected objects by classical image analysis, then GenEval's rules.

No learned model. The pipeline, for an RGB image whose background is plain:
  1. background colour = median of the border pixels; foreground = pixels far from it;
  2. foreground connected components; specks smaller than MIN_AREA are dropped;
  3. each component's colour = the palette colour most of its eroded core votes for (a component whose core
     holds two colours, i.e. two touching objects, is split between them);
  4. the object's mask = pixels nearer its colour than the background (half contrast), so blur neither grows
     nor shrinks it; its box gives centre and size;
  5. shape = the template (drawn by the renderer itself, fitted to the box) with the highest IoU, if >= SHAPE_MIN_IOU.
Accuracy on clean, mismatched and degraded images is measured by benchmarks/evaluator_accuracy.py.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image
from scipy import ndimage

from gvu.world.rules import Detection, Judgement, judge
from gvu.world.scene import shape_coverage
from gvu.world.vocab import COLORS, SHAPES

FG_THRESHOLD = 45.0  # RGB distance from the background; the closest palette colour is ~100 away
MIN_AREA_FRACTION = 16 / 64**2  # smaller components are specks (a small star covers ~60 px at 64 px)
MIN_CORE = 4  # core pixels a colour needs to count as an object of its own inside a component
SHAPE_MIN_IOU = 0.55
BLUR_SIGMAS = (0.0, 0.7, 1.2)

_PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # [C, 3]
_PALETTE_NAMES = list(COLORS)


def to_array(image) -> np.ndarray:
    """PIL image or uint8 array [H, W, 3] -> float32 array [H, W, 3]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(arr.shape)}")
    return arr


def _background(arr: np.ndarray) -> np.ndarray:
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return np.median(border, axis=0)


@functools.lru_cache(maxsize=4096)
def _templates(shape: str, cx: float, cy: float, rx: float, ry: float, h: int, w: int) -> tuple[np.ndarray, ...]:
    """The shape's coverage as the renderer draws it, blurred at each of BLUR_SIGMAS (read-only arrays).

    Cached: box corners are whole pixels, so centres and half-widths are multiples of 0.5 and the same boxes recur
    across objects and images; drawing and blurring the templates was most of an evaluation's time."""
    sharp = shape_coverage(shape, cx, cy, rx, ry, h, w)
    out = tuple(ndimage.gaussian_filter(sharp, sigma) if sigma else sharp for sigma in BLUR_SIGMAS)
    for t in out:
        t.setflags(write=False)
    return out


def _fit_shape(mask: np.ndarray, cover: np.ndarray, y0: int, x0: int) -> tuple[str | None, float, float, float, float]:
    """Best template for a (cropped) object; returns shape, centre x, y and half-widths (full-image px).

    mask: bool [h, w], the object's half-contrast pixels, which give its box; cover: float [h, w], its soft
    coverage in [0, 1], compared with each template's coverage by soft IoU (sum of min / sum of max). Thin
    tips fall below half contrast, so the box is also tried half a pixel and a pixel wider on each side. Blur
    (from a VQ decoder or a camera) rounds a small square towards a circle, so each template is also compared
    blurred at the sigmas in BLUR_SIGMAS, and a shape's score is its best over them.
    """
    ys, xs = np.nonzero(mask)
    bx0, bx1, by0, by1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    cx, cy, rx, ry = (bx0 + bx1) / 2, (by0 + by1) / 2, (bx1 - bx0) / 2, (by1 - by0) / 2
    best, best_iou, best_r = None, SHAPE_MIN_IOU, (rx, ry)
    h, w = mask.shape
    for shape in SHAPES:
        for grow in (0.0, 0.5, 1.0):
            for t in _templates(shape, float(cx), float(cy), float(rx + grow), float(ry + grow), h, w):
                iou = np.minimum(t, cover).sum() / max(np.maximum(t, cover).sum(), 1e-6)
                if iou > best_iou:
                    best, best_iou, best_r = shape, iou, (rx + grow, ry + grow)
    return best, cx + x0, cy + y0, best_r[0], best_r[1]


def detect(image) -> list[Detection]:
    """All objects in the image, largest first."""
    arr = to_array(image)
    h, w, _ = arr.shape
    bg = _background(arr)
    fg = np.linalg.norm(arr - bg, axis=-1) > FG_THRESHOLD
    label_of = np.argmin(((arr[..., None, :] - _PALETTE) ** 2).sum(-1), axis=-1)  # [H, W] palette index
    min_area = max(4, round(MIN_AREA_FRACTION * h * w))
    comps, n = ndimage.label(fg)
    out = []
    for k, sl in enumerate(ndimage.find_objects(comps), start=1):
        # work in a window around the component, 2 px wider, so masks and templates stay small
        y0, y1 = max(sl[0].start - 2, 0), min(sl[0].stop + 2, h)
        x0, x1 = max(sl[1].start - 2, 0), min(sl[1].stop + 2, w)
        comp = comps[y0:y1, x0:x1] == k
        if comp.sum() < min_area:
            continue
        core = ndimage.binary_erosion(comp)
        votes = np.bincount(label_of[y0:y1, x0:x1][core], minlength=len(_PALETTE))
        colors = [c for c in np.argsort(-votes) if votes[c] >= max(MIN_CORE, 0.2 * core.sum())]
        if not colors:
            continue
        win = arr[y0:y1, x0:x1]
        region = ndimage.binary_dilation(comp, iterations=1)
        # pixels of this component's window that belong to no other component (blur halo included)
        region2 = np.isin(comps[y0:y1, x0:x1], (0, k))
        if len(colors) > 1:  # touching objects: give each pixel to the nearer of the voting colours
            d = ((win[..., None, :] - _PALETTE[colors]) ** 2).sum(-1)
            owner = np.argmin(d, axis=-1)
        for i, c in enumerate(colors):
            # half-contrast mask: projection of (pixel - bg) on (colour - bg) > 0.5
            direction = _PALETTE[c] - bg
            t = ((win - bg) @ direction) / max(float(direction @ direction), 1e-6)
            mask = region & (t > 0.5)
            if len(colors) > 1:
                mask &= owner == i
            parts, m = ndimage.label(mask)
            if m == 0:
                continue
            sizes = ndimage.sum(mask, parts, range(1, m + 1))
            mask = parts == (1 + int(np.argmax(sizes)))
            if mask.sum() < min_area:
                continue
            near = ndimage.binary_dilation(mask, iterations=2) & region2
            if len(colors) > 1:
                near &= owner == i
            shape, cx, cy, rx, ry = _fit_shape(mask, np.clip(t, 0, 1) * near, y0, x0)
            out.append(Detection(shape, _PALETTE_NAMES[c], float(cx), float(cy), float(rx), float(ry)))
    out.sort(key=lambda d: -d.rx * d.ry)
    return out


def evaluate_image(metadata: dict, image) -> Judgement:
    """Judge one image against one prompt's GenEval metadata."""
    arr = to_array(image)
    if arr.shape[0] != arr.shape[1]:
        raise ValueError(f"nano-world images are square; got {arr.shape[1]}x{arr.shape[0]}")
    return judge(metadata, detect(arr), arr.shape[0])


def _evaluate_chunk(pairs: list) -> list[Judgement]:
    return [evaluate_image(m, img) for m, img in pairs]


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: leave when the parent process is gone (killed by a signal, its pool never shut down)."""
    import os
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


@functools.lru_cache(maxsize=None)
def _pool(workers: int):
    """One pool of `workers` processes per size, kept for the life of the process (started by spawn: safe beside
    CUDA and torch's threads). Workers exit on their own if this process dies without shutting the pool down."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))


def evaluate_images(metadata: list[dict], images, workers: int = 0) -> list[Judgement]:
    """evaluate_image over many images, in `workers` processes when workers > 1 (the same judgements, in order).
    The evaluator runs on the CPU at a few ms an image, which is most of an oracle-reward training step on a GPU
    (256 images: 1.8 s of 2.7 s on an H100 machine); a machine with cores to spare evaluates in parallel."""
    pairs = list(zip(metadata, images, strict=True))
    if workers <= 1 or len(pairs) < 2 * workers:
        return _evaluate_chunk(pairs)
    size = -(-len(pairs) // workers)
    chunks = [pairs[i:i + size] for i in range(0, len(pairs), size)]
    return [j for part in _pool(workers).map(_evaluate_chunk, chunks) for j in part]
