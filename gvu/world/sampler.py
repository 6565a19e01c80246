"""Scene sampler: a random scene that satisfies a prompt's GenEval metadata (unspecified attributes random).

Placement is by rejection: objects keep a gap of GAP pixels between boxes, and relations are drawn with
twice GenEval's margin so that a rendered scene still satisfies its prompt after blur or VQ reconstruction.
"""

from __future__ import annotations

import random

from gvu.world import rules
from gvu.world.rules import Detection, judge_scene, relative_position
from gvu.world.scene import Obj, Scene
from gvu.world.vocab import COLOR_NAMES, MAX_OBJECTS, SIZE_FRACTION, SIZES

GAP = 3  # pixels between object boxes at 64 px (scaled with image size)
SAMPLE_MARGIN = 2 * rules.POSITION_THRESHOLD


class UnsatisfiableError(ValueError):
    pass


def _plan(metadata: dict, rng: random.Random, forbid: frozenset) -> list[dict]:
    includes = metadata.get("include", [])
    total = sum(int(r["count"]) for r in includes)
    if total > MAX_OBJECTS:
        raise UnsatisfiableError(f"{total} objects do not fit in one scene (at most {MAX_OBJECTS})")
    plan = []
    for gi, req in enumerate(includes):
        for _ in range(int(req["count"])):
            color = req.get("color")
            if color is None:
                choices = [c for c in COLOR_NAMES if (c, req["class"]) not in forbid]
                color = rng.choice(choices)
            size = {"larger": "large", "smaller": "small"}.get(req.get("size"))
            if size is None:
                size = rng.choice(SIZES) if total <= 3 else "small"
            plan.append({"group": gi, "shape": req["class"], "color": color, "size": size,
                         "region": req.get("region")})
    return plan


def _place(plan: list[dict], n: int, rng: random.Random) -> list[Obj] | None:
    gap = GAP * n / 64
    objs: list[Obj] = []
    for p in plan:
        r = SIZE_FRACTION[p["size"]] * n
        lo, hi = r + 1, n - r - 1
        xr, yr = (lo, hi), (lo, hi)
        reg = p["region"]
        if reg == "left":
            xr = (lo, n / 2 - 1)
        elif reg == "right":
            xr = (n / 2 + 1, hi)
        elif reg == "above":
            yr = (lo, n / 2 - 1)
        elif reg == "below":
            yr = (n / 2 + 1, hi)
        for _ in range(100):
            x, y = round(rng.uniform(*xr)), round(rng.uniform(*yr))
            if all(abs(x - o.x) >= r + o.radius(n) + gap or abs(y - o.y) >= r + o.radius(n) + gap for o in objs):
                objs.append(Obj(p["shape"], p["color"], p["size"], float(x), float(y)))
                break
        else:
            return None
    return objs


def _relations_hold(metadata: dict, plan: list[dict], objs: list[Obj], n: int) -> bool:
    includes = metadata.get("include", [])
    dets = [Detection.from_obj(o, n) for o in objs]
    for gi, req in enumerate(includes):
        if "position" in req:
            rel, gj = req["position"][0], int(req["position"][1])
            a = [d for d, p in zip(dets, plan) if p["group"] == gi]
            b = [d for d, p in zip(dets, plan) if p["group"] == gj]
            if not all(rel in relative_position(x, y, SAMPLE_MARGIN) for x in a for y in b):
                return False
    return True


def sample_scene(metadata: dict, rng: random.Random, image_size: int = 64,
                 forbid: frozenset = frozenset(), tries: int = 500) -> Scene:
    """A random scene for `metadata` that the symbolic judge accepts.

    forbid: (colour, shape) pairs never drawn for objects whose colour the prompt leaves open
    (keeps held-out compositions out of training images).
    """
    for _ in range(tries):
        plan = _plan(metadata, rng, forbid)
        objs = _place(plan, image_size, rng)
        if objs is None or not _relations_hold(metadata, plan, objs, image_size):
            continue
        rng.shuffle(objs)  # drawing order carries no information
        if judge_scene(metadata, objs, image_size).correct:
            return Scene(tuple(objs), image_size)
    raise UnsatisfiableError(f"could not place a scene for {metadata.get('prompt')!r} in {tries} tries")
