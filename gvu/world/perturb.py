"""Minimal prompt edits: change one attribute (colour, count, shape or relation) so that the prompt becomes
false for a scene. Used to measure understanding: does log p(prompt | image) rank the true prompt above
its minimally different, false neighbours?
"""

from __future__ import annotations

import copy
import random
import re

from gvu.world.prompts import MIRROR
from gvu.world.rules import judge_scene
from gvu.world.scene import Scene
from gvu.world.vocab import COLOR_NAMES, MAX_COUNT, NUMBER_WORDS, SHAPES, plural

KINDS = ("color", "count", "shape", "relation")


def _fix_articles(text: str) -> str:
    return re.sub(r"\b(a|an) (\w+)", lambda m: ("an " if m.group(2)[0] in "aeiou" else "a ") + m.group(2), text)


def _sub_word(text: str, old: str, new: str) -> str:
    return re.sub(rf"\b{re.escape(old)}\b", new, text, count=1)


def perturb(metadata: dict, kind: str, rng: random.Random, count: int | None = None) -> dict | None:
    """One random edit of `kind`, or None if the prompt has nothing of that kind to change.
    count: with kind "count", the new count (default: a random other one)."""
    m = copy.deepcopy(metadata)
    inc = m["include"]
    text = m["prompt"]
    if kind == "color":
        idx = [i for i, r in enumerate(inc) if "color" in r]
        if not idx:
            return None
        r = inc[rng.choice(idx)]
        new = rng.choice([c for c in COLOR_NAMES if c != r["color"]])
        text = _sub_word(text, f"{r['color']} {r['class'] if r['count'] == 1 else plural(r['class'])}",
                         f"{new} {r['class'] if r['count'] == 1 else plural(r['class'])}")
        r["color"] = new
    elif kind == "count":
        idx = [i for i, r in enumerate(inc) if r["count"] >= 2 or NUMBER_WORDS[r["count"]] in text.split()]
        if not idx:
            return None
        r = inc[rng.choice(idx)]
        k = r["count"]
        new = count if count is not None else \
            rng.choice([c for c in range(max(2, 1), MAX_COUNT + 1) if c != k] if k >= 2 else [2, 3])
        if new == k:
            return None
        word_old = NUMBER_WORDS[k]
        if word_old not in text.split():
            return None
        text = _sub_word(text, word_old, NUMBER_WORDS[new])
        if k == 1:  # "one circle" -> "two circles"
            text = re.sub(rf"\b{NUMBER_WORDS[new]} (\w+ )?{r['class']}\b",
                          lambda mm: f"{NUMBER_WORDS[new]} {mm.group(1) or ''}{plural(r['class'])}", text, count=1)
        r["count"] = new
        for e in m.get("exclude", []):
            if e["class"] == r["class"]:
                e["count"] = new + 1
    elif kind == "shape":
        used = {r["class"] for r in inc}
        r = rng.choice(inc)
        new = rng.choice([s for s in SHAPES if s not in used])
        old = r["class"]
        text = _sub_word(text, plural(old), plural(new)) if r["count"] > 1 else _sub_word(text, old, new)
        for e in m.get("exclude", []):
            if e["class"] == old:
                e["class"] = new
        r["class"] = new
    elif kind == "relation":
        idx = [i for i, r in enumerate(inc) if "position" in r]
        if idx:
            r = inc[idx[0]]
            new = MIRROR[r["position"][0]]
            text = _sub_word(text, r["position"][0], new)
            r["position"] = [new, r["position"][1]]
        else:
            idx = [i for i, r in enumerate(inc) if "region" in r]
            if not idx:
                return None
            swap = {"left": "right", "right": "left", "above": "below", "below": "above"}
            for i in idx:
                inc[i]["region"] = swap[inc[i]["region"]]
            text = re.sub(r"on the (left|right|above|below)", lambda mm: f"on the {swap[mm.group(1)]}", text)
    else:
        raise ValueError(f"unknown kind {kind!r}; choose one of {KINDS}")
    m["prompt"] = _fix_articles(text)
    return m if m["prompt"] != metadata["prompt"] else None


def distractors(metadata: dict, scene: Scene, k: int, rng: random.Random, tries: int = 50) -> list[dict]:
    """k distinct edited prompts, each false for `scene` (symbolic judge); kinds vary where they can."""
    out: list[dict] = []
    seen = {metadata["prompt"]}
    for t in range(tries):
        kind = KINDS[(t + rng.randrange(len(KINDS))) % len(KINDS)]
        m = perturb(metadata, kind, rng)
        if m is None or m["prompt"] in seen or judge_scene(m, list(scene.objects), scene.image_size).correct:
            continue
        seen.add(m["prompt"])
        out.append(m | {"perturbation": kind})
        if len(out) == k:
            break
    return out
