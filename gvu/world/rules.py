"""GenEval's judging rules over a list of objects, shared by the exact evaluator and the symbolic judge.

This follows GenEval's evaluate_images.py (djghosh13/geneval):
  - include {class, count}: at least `count` objects of that class; the first `count` of them are "found";
  - include colour: every found object has that colour;
  - include position [relation, i]: every found object stands in `relation` to every object found for
    include i, with GenEval's relative_position (box centres, minus 0.1 x the summed box sizes as margin);
  - exclude {class, count}: fewer than `count` objects of that class (this is how counting prompts get exact counts).
Extensions for GenEval++ metadata (judged by a VLM in its own protocol, so the rules here are ours):
  - include region (left/right/above/below): every found object's centre lies in that half of the image;
  - include size (larger/smaller): every found "larger" object is bigger than every found "smaller" object.
GenEval takes the detector's top-confidence objects as "found"; we have no confidence, so we take the ones
that already meet the colour, then region, then the largest. The overall score is the unweighted mean over tags.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gvu.world.scene import Obj
from gvu.world.vocab import SIZE_FRACTION

POSITION_THRESHOLD = 0.1  # GenEval's margin, as a fraction of the two boxes' summed size


@dataclass(frozen=True)
class Detection:
    """An object as the judge sees it: class (shape), colour, centre and half-widths in pixels."""

    shape: str | None  # None: a blob whose shape matches no template (counts as no class)
    color: str
    x: float
    y: float
    rx: float
    ry: float

    @property
    def box(self) -> tuple[float, float, float, float]:
        return (self.x - self.rx, self.y - self.ry, self.x + self.rx, self.y + self.ry)

    def size_name(self, image_size: int) -> str:
        middle = (SIZE_FRACTION["small"] + SIZE_FRACTION["large"]) / 2 * image_size
        return "large" if (self.rx + self.ry) / 2 > middle else "small"

    @staticmethod
    def from_obj(o: Obj, image_size: int) -> "Detection":
        r = o.radius(image_size)
        return Detection(o.shape, o.color, o.x, o.y, r, r)


@dataclass(frozen=True)
class Judgement:
    correct: bool
    reason: str  # empty when correct; otherwise the first failed constraint, in GenEval's wording
    satisfied: int  # constraints met (for partial credit)
    total: int  # constraints checked

    @property
    def partial(self) -> float:
        return self.satisfied / max(self.total, 1)


def relative_position(a: Detection, b: Detection, threshold: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of a to b, as GenEval computes them from boxes (y grows downwards)."""
    offset = np.array([a.x - b.x, a.y - b.y])
    dims = np.array([2 * a.rx + 2 * b.rx, 2 * a.ry + 2 * b.ry])
    return relations_of_offset(offset, dims, threshold)


def relations_of_offset(offset: np.ndarray, dims: np.ndarray, margin: float) -> set[str]:
    """GenEval's relative-position rule (evaluate_images.relative_position) on centre offset [2] = centre(A) -
    centre(B) and dims [2] = size(A) + size(B) per axis: each |offset| shrinks by margin x dims, floored at 0 (sign
    kept); both shrunk below 1e-3 means "together" (no relation); else the shrunk offset over the length of the
    unshrunk one, below -0.5 is left of / above and above 0.5 right of / below (image y grows downwards)."""
    revised = np.maximum(np.abs(offset) - margin * dims, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rels = set()
    if dx < -0.5:
        rels.add("left of")
    if dx > 0.5:
        rels.add("right of")
    if dy < -0.5:
        rels.add("above")
    if dy > 0.5:
        rels.add("below")
    return rels


def in_region(d: Detection, region: str, image_size: int) -> bool:
    half = image_size / 2
    return {"left": d.x < half, "right": d.x > half, "above": d.y < half, "below": d.y > half}[region]


def judge(metadata: dict, objects: list[Detection], image_size: int) -> Judgement:
    """Is the image whose objects are `objects` correct for the prompt `metadata`? (GenEval rules + GenEval++.)"""
    satisfied = total = 0
    reason = ""

    def check(ok: bool, why: str) -> bool:
        nonlocal satisfied, total, reason
        total += 1
        satisfied += ok
        if not ok and not reason:
            reason = why
        return ok

    includes = metadata.get("include", [])
    found: list[list[Detection] | None] = []
    for req in includes:
        cls, count = req["class"], int(req["count"])
        color, region = req.get("color"), req.get("region")
        of_class = [d for d in objects if d.shape == cls]
        of_class.sort(key=lambda d: (color is not None and d.color == color,
                                     region is not None and in_region(d, region, image_size),
                                     d.rx * d.ry), reverse=True)
        group = of_class[:count]
        ok = check(len(group) >= count, f"expected {cls}>={count}, found {len(group)}")
        if color is not None:
            n = sum(d.color == color for d in group)
            ok &= check(len(group) >= count and n >= count, f"expected {color} {cls}>={count}, found {n} {color}")
        if region is not None:
            n = sum(in_region(d, region, image_size) for d in group)
            ok &= check(len(group) >= count and n >= count, f"expected {cls} on the {region}, found {n} there")
        found.append(group if ok else None)
    for i, req in enumerate(includes):
        if "position" in req:
            rel, j = req["position"][0], int(req["position"][1])
            ok = found[i] is not None and found[j] is not None and all(
                rel in relative_position(a, b) for a in found[i] for b in found[j])
            check(ok, f"expected {req['class']} {rel} {includes[j]['class']}")
    sized = {s: [d for i, req in enumerate(includes) if req.get("size") == s for d in (found[i] or [])]
             for s in ("larger", "smaller")}
    if any(req.get("size") for req in includes):
        big, small = sized["larger"], sized["smaller"]
        ok = bool(big) and bool(small) and min(d.rx + d.ry for d in big) > max(d.rx + d.ry for d in small)
        check(ok, "expected the 'larger' objects to be bigger than the 'smaller' ones")
    for req in metadata.get("exclude", []):
        n = sum(d.shape == req["class"] for d in objects)
        check(n < int(req["count"]), f"expected {req['class']}<{req['count']}, found {n}")
    return Judgement(reason == "", reason, satisfied, total)


def judge_scene(metadata: dict, objects: list[Obj], image_size: int) -> Judgement:
    """The symbolic judge: the same rules applied to a scene's true objects (no image analysis)."""
    return judge(metadata, [Detection.from_obj(o, image_size) for o in objects], image_size)
