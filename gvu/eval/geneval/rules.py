"""GenEval's correctness rules, as a pure function of (prompt metadata, detections).

This follows djghosh13/geneval evaluation/evaluate_images.py (`evaluate_image` and `evaluate`) rule for rule,
with its default options:

- Keep a detection when its score is strictly above 0.3, or above 0.9 when the prompt's tag is "counting"
  (`bbox[:, 4] > threshold`); keep at most 16 a class, the highest scores first. No NMS (max_overlap = 1).
- include clause {class, count}: the found objects are the class's first `count` detections by score; fewer
  than `count` fails ("expected {class}>={count}, found {n}"). "Exactly N" is not an include rule: GenEval's
  counting prompts say it with an exclude clause {class, count: N+1}.
- colour: the found objects are classified (CLIP, zero-shot among the 10 COLORS); the requested colour must
  win at least `count` times.
- position [relation, j]: only checked when the clause has not failed so far; include j must have matched
  (else "no target for ..."); every found object must stand in `relation` to every object found for clause j,
  by `relative_position` (centres compared after subtracting 0.1 of the summed box sizes, see there).
- exclude clause {class, count}: fails when `count` or more of the class were kept.
- The image is correct when no clause failed; the reason is the failures' messages joined by newlines.

One choice of ours: when a position fails with two true relations, the official message joins them in a
Python set's order (which varies with the hash seed); we join them in the fixed order left, right, above, below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from gvu.world.rules import relations_of_offset

COLORS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
SCORE_THRESHOLD = 0.3
COUNTING_SCORE_THRESHOLD = 0.9
MAX_OBJECTS_PER_CLASS = 16
POSITION_MARGIN = 0.1


@dataclass(frozen=True)
class Detection:
    """One detected instance of a class."""

    score: float  # class probability x mean mask probability inside the mask
    box: tuple[float, float, float, float]  # (x0, y0, x1, y1) in pixels of the original image, x1/y1 exclusive
    mask: np.ndarray | None = None  # bool [H, W] at the original image's size (None in tests that need no colour)


# (class name, its found objects) -> one colour name per object
ColorClassifier = Callable[[str, list[Detection]], list[str]]


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reason: str  # "" when correct; else the failed clauses' messages, one a line
    kept: dict[str, list[Detection]]  # the detections the rules saw: thresholded, at most 16 a class, by score


def score_threshold(tag: str) -> float:
    return COUNTING_SCORE_THRESHOLD if tag == "counting" else SCORE_THRESHOLD


def keep_confident(detections: dict[str, list[Detection]], tag: str) -> dict[str, list[Detection]]:
    """Per class: scores strictly above the tag's threshold, highest first, at most 16; classes left empty
    are dropped (as evaluate_image deletes them)."""
    threshold = score_threshold(tag)
    kept = {}
    for name, dets in detections.items():
        confident = sorted((d for d in dets if d.score > threshold), key=lambda d: -d.score)
        if confident:
            kept[name] = confident[:MAX_OBJECTS_PER_CLASS]
    return kept


def relative_position(a: Detection, b: Detection) -> set[str]:
    """The relations of A to B (evaluate_images.relative_position).

    offset = centre(A) - centre(B); each axis's |offset| shrinks by 0.1 x (size of A + size of B) along that
    axis, floored at 0 (sign kept). If both shrunk offsets are below 1e-3 the boxes are "together": no relation.
    Else the shrunk offset is divided by the length of the *unshrunk* offset, and a component below -0.5 means
    left of / above, above 0.5 right of / below (image y grows downwards)."""
    boxes = np.array([a.box, b.box], dtype=np.float64).reshape(2, 2, 2)  # [object, corner, (x, y)]
    center_a, center_b = boxes.mean(axis=1)
    size_a, size_b = boxes[:, 1] - boxes[:, 0]
    return relations_of_offset(center_a - center_b, size_a + size_b, POSITION_MARGIN)


def _joined(relations: set[str]) -> str:
    return " and ".join(r for r in RELATIONS if r in relations)


def evaluate(metadata: dict, kept: dict[str, list[Detection]], classify_colors: ColorClassifier) -> tuple[bool, str]:
    """GenEval's `evaluate` on already-kept detections: (correct, reason)."""
    correct = True
    reasons: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        matched = True
        found = kept.get(name, [])[:count]
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = classify_colors(name, found)
                wins = colors.count(req["color"])
                if wins < count:
                    correct = matched = False
                    reasons.append(f"expected {req['color']} {name}>={count}, found {wins} {req['color']}; and "
                                   + ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors))
            if "position" in req and matched:
                relation, target = req["position"]
                if matched_groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for obj in found:
                        for target_obj in matched_groups[target]:
                            true_relations = relative_position(obj, target_obj)
                            if relation not in true_relations:
                                correct = matched = False
                                reasons.append(f"expected {name} {relation} target, found "
                                               f"{_joined(true_relations)} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        name, count = req["class"], req["count"]
        if len(kept.get(name, [])) >= count:
            correct = False
            reasons.append(f"expected {name}<{count}, found {len(kept[name])}")
    return correct, "\n".join(reasons)


def judge(metadata: dict, detections: dict[str, list[Detection]], classify_colors: ColorClassifier) -> Verdict:
    """All of GenEval's rules for one image: keep the confident detections, then evaluate the clauses."""
    kept = keep_confident(detections, metadata["tag"])
    correct, reason = evaluate(metadata, kept, classify_colors)
    return Verdict(correct, reason, kept)


def check_metadata(m: dict, where: str, class_names: frozenset[str]) -> None:
    """Can GenEval's rules judge this prompt? Raises ValueError naming `where` if not (the official script
    would crash halfway, or silently never match an unknown class)."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"{where}: {what}")

    inc = m.get("include", [])
    for key in ("include", "exclude"):
        for i, r in enumerate(m.get(key, [])):
            need(r["class"] in class_names, f"{key}[{i}]: {r['class']!r} is not one of GenEval's 80 COCO classes")
            need(r["count"] >= 1, f"{key}[{i}]: count must be at least 1, got {r['count']}")
    for i, r in enumerate(inc):
        if "color" in r:
            need(r["color"] in COLORS, f"include[{i}]: unknown colour {r['color']!r}; GenEval's colours are "
                                       f"{', '.join(COLORS)}")
        if "position" in r:
            relation, j = r["position"]
            need(relation in RELATIONS, f"include[{i}]: unknown relation {relation!r}; GenEval's are "
                                        f"{', '.join(RELATIONS)}")
            need(0 <= j < i, f"include[{i}]: position refers to include[{j}], which must come before it")
