"""Scenes and the renderer: a scene is a list of objects on a plain background, drawn with PIL.

Every shape is drawn to fill the square box [cx - r, cx + r] x [cy - r, cy + r], so an object's box gives
its size and centre back exactly (the evaluator relies on this). Rendering is deterministic: the same
scene always gives the same pixels; randomness lives only in the scene sampler (gvu.world.sampler).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from gvu.world.vocab import BACKGROUND, COLORS, SHAPES, SIZE_FRACTION

SUPERSAMPLE = 4  # draw at 4x and downscale: anti-aliased edges, like a generated image's


@dataclass(frozen=True)
class Obj:
    """One object: shape (the GenEval `class`), colour name, size name, centre (x, y) in pixels."""

    shape: str
    color: str
    size: str
    x: float
    y: float

    def radius(self, image_size: int) -> float:
        return SIZE_FRACTION[self.size] * image_size

    def box(self, image_size: int) -> tuple[float, float, float, float]:
        r = self.radius(image_size)
        return (self.x - r, self.y - r, self.x + r, self.y + r)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    image_size: int = 64
    background: tuple[int, int, int] = field(default=BACKGROUND)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "background": list(self.background),
                "objects": [asdict(o) for o in self.objects]}

    @staticmethod
    def from_dict(d: dict) -> "Scene":
        return Scene(tuple(Obj(**o) for o in d["objects"]), int(d["image_size"]), tuple(d["background"]))


def _normalise(points: list[tuple[float, float]]) -> tuple[tuple[float, float], ...]:
    """Affinely map a polygon so its bounding box is exactly [-1, 1] x [-1, 1]."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    return tuple((2 * (x - x0) / (x1 - x0) - 1, 2 * (y - y0) / (y1 - y0) - 1) for x, y in points)


@lru_cache(maxsize=None)
def unit_polygon(shape: str) -> tuple[tuple[float, float], ...] | None:
    """The shape's outline in [-1, 1]^2 (y down), or None for the circle (drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        return ((-1, -1), (1, -1), (1, 1), (-1, 1))
    if shape == "triangle":
        return ((0, -1), (1, 1), (-1, 1))
    if shape == "star":  # five points, inner radius 0.5 of the outer (fat enough to survive 64 px)
        pts = []
        for k in range(10):
            a = -math.pi / 2 + k * math.pi / 5
            rr = 1.0 if k % 2 == 0 else 0.5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
        return _normalise(pts)
    if shape == "heart":  # the classic parametric heart, flipped so the point is at the bottom
        pts = []
        for k in range(64):
            t = 2 * math.pi * k / 64
            px = 16 * math.sin(t) ** 3
            py = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((px, -py))
        return _normalise(pts)
    if shape == "cross":  # a plus sign with arms one third of the width
        a = 1 / 3
        return ((-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1),
                (-a, a), (-1, a), (-1, -a), (-a, -a))
    raise ValueError(f"unknown shape {shape!r}; the world's shapes are {', '.join(SHAPES)}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, rx: float, ry: float, fill) -> None:
    """Draw `shape` filling the box [cx-rx, cx+rx] x [cy-ry, cy+ry] (pixel-edge coordinates)."""
    poly = unit_polygon(shape)
    if poly is None:
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=fill)
    else:
        draw.polygon([(cx + px * rx, cy + py * ry) for px, py in poly], fill=fill)


def shape_coverage(shape: str, cx: float, cy: float, rx: float, ry: float, height: int, width: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], float32 [height, width], of the shape drawn as the renderer draws it."""
    s = SUPERSAMPLE
    img = Image.new("L", (width * s, height * s), 0)
    draw_shape(ImageDraw.Draw(img), shape, cx * s, cy * s, rx * s, ry * s, fill=255)
    small = img.resize((width, height), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def render(scene: Scene) -> Image.Image:
    """Draw the scene as an RGB image of scene.image_size pixels a side."""
    n, s = scene.image_size, SUPERSAMPLE
    img = Image.new("RGB", (n * s, n * s), tuple(scene.background))
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        r = o.radius(n) * s
        draw_shape(draw, o.shape, o.x * s, o.y * s, r, r, fill=COLORS[o.color])
    return img.resize((n, n), Image.BOX)
