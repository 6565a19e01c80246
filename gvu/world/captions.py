"""Captions and question-answer pairs about a scene, the understanding side's training data.

Three caption styles, so that a prompt's likelihood under "Describe the image in detail." measures agreement
with the image rather than one fixed phrasing:
  full     every object, grouped: "two small red circles, a large blue star and a small green cross."
  partial  a random non-empty subset of those groups (GenEval prompts, too, mention only some objects)
  geneval  a GenEval / GenEval++ prompt that is true of the scene ("a photo of a red circle left of a star"),
           built from the scene and checked with the symbolic judge.
Questions cover counts, colours, relations, sizes and existence, each with its answer word.
"""

from __future__ import annotations

import random
from collections import Counter

from gvu.world.prompts import _a, _n, split_of
from gvu.world.rules import Detection, in_region, judge_scene, relative_position
from gvu.world.scene import Scene
from gvu.world.vocab import (COLOR_NAMES, GENEVAL_TAGS, GENEVALPP_TAGS, NUMBER_WORDS, RELATIONS,
                             SHAPES, plural)

REWARD_QUERY = "Describe the image in detail."  # the paper's query for the GvU reward
CAPTION_STYLES = ("full", "partial", "geneval")
QUESTION_TYPES = ("count", "color", "shape", "relation", "size", "exists")


def _groups(scene: Scene) -> list[tuple[tuple[str, str, str], int]]:
    """(size, colour, shape) groups with their counts, in a fixed order (by shape, then colour, then size)."""
    c = Counter((o.size, o.color, o.shape) for o in scene.objects)
    return sorted(c.items(), key=lambda kv: (SHAPES.index(kv[0][2]), kv[0][1], kv[0][0]))


def _phrase(group: tuple[str, str, str], k: int) -> str:
    size, color, shape = group
    return f"{_a(size)} {color} {shape}" if k == 1 else f"{NUMBER_WORDS[k]} {size} {color} {plural(shape)}"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def describe(scene: Scene, rng: random.Random, style: str | None = None, train_only: bool = False) -> str:
    """A caption of `style` (random style when None). train_only: a geneval-style caption is a train-split prompt
    ("train" in split_of): one that is an eval-split text or names a held-out relation is skipped for the next tag.
    Without it about 8% of geneval-style captions of training scenes are eval-split prompt texts and 0.4% held-out
    relations (PretrainConfig.caption_train_only)."""
    style = style or rng.choice(CAPTION_STYLES)
    groups = _groups(scene)
    if style == "full":
        return _join([_phrase(g, k) for g, k in groups]) + "."
    if style == "partial":
        chosen = rng.sample(groups, rng.randint(1, len(groups)))
        return _join([_phrase(g, k) for g, k in chosen]) + "."
    if style == "geneval":
        suite_tags = [("geneval", t) for t in GENEVAL_TAGS] + [("genevalpp", t) for t in GENEVALPP_TAGS]
        rng.shuffle(suite_tags)
        for suite, tag in suite_tags:
            m = true_prompt(scene, suite, tag, rng)
            if m is not None and not (train_only and "train" not in split_of(m, suite)):
                return m["prompt"]
        return _join([_phrase(g, k) for g, k in groups]) + "."
    raise ValueError(f"unknown caption style {style!r}; choose one of {', '.join(CAPTION_STYLES)}")


def true_prompt(scene: Scene, suite: str, tag: str, rng: random.Random) -> dict | None:
    """A random prompt of (suite, tag) in GenEval's metadata format that is true of the scene, or None."""
    n = scene.image_size
    objs = list(scene.objects)
    count = Counter(o.shape for o in objs)
    colours = {s: {o.color for o in objs if o.shape == s} for s in count}
    single = [o for o in objs if count[o.shape] == 1]  # the only object of its shape
    shapes = list(count)
    rng.shuffle(shapes)
    rng.shuffle(single)
    big = lambda s: "A photo of " if suite == "genevalpp" else "a photo of "  # noqa: E731
    m: dict | None = None
    if tag == "single_object":
        s = shapes[0]
        m = {"include": [{"class": s, "count": 1}], "prompt": f"a photo of {_a(s)}"}
    elif tag == "two_object" and len(shapes) >= 2:
        a, b = shapes[:2]
        m = {"include": [{"class": a, "count": 1}, {"class": b, "count": 1}], "prompt": f"a photo of {_a(a)} and {_a(b)}"}
    elif tag == "counting":
        many = [s for s in shapes if count[s] >= 2]
        if many:
            s = many[0]
            m = {"include": [{"class": s, "count": count[s]}], "exclude": [{"class": s, "count": count[s] + 1}],
                 "prompt": big(s) + f"{NUMBER_WORDS[count[s]]} {plural(s)}"}
    elif tag == "colors" and single:
        o = single[0]
        m = {"include": [{"class": o.shape, "count": 1, "color": o.color}], "prompt": f"a photo of {_a(o.color + ' ' + o.shape)}"}
    elif tag == "position" and len(single) >= 2:
        a, b = single[:2]
        rels = sorted(relative_position(Detection.from_obj(a, n), Detection.from_obj(b, n)))
        if rels:
            rel = rng.choice(rels)
            m = {"include": [{"class": b.shape, "count": 1}, {"class": a.shape, "count": 1, "position": [rel, 0]}],
                 "prompt": f"a photo of {_a(a.shape)} {rel} {_a(b.shape)}"}
    elif tag == "color_attr" and suite == "geneval" and len(single) >= 2:
        a, b = single[:2]
        m = {"include": [{"class": o.shape, "count": 1, "color": o.color} for o in (a, b)],
             "prompt": f"a photo of {_a(a.color + ' ' + a.shape)} and {_a(b.color + ' ' + b.shape)}"}
    elif tag == "color_attr" and len(single) >= 3:
        a, b, c = single[:3]
        m = {"include": [{"class": o.shape, "count": 1, "color": o.color} for o in (a, b, c)],
             "prompt": f"A photo of {_a(a.color + ' ' + a.shape)}, {_a(b.color + ' ' + b.shape)}, and {_a(c.color + ' ' + c.shape)}"}
    elif tag == "color_count_attr":
        mono = [s for s in shapes if len(colours[s]) == 1]
        if len(mono) >= 2:
            a, b = mono[:2]
            ca, cb = next(iter(colours[a])), next(iter(colours[b]))
            m = {"include": [{"class": a, "count": count[a], "color": ca}, {"class": b, "count": count[b], "color": cb}],
                 "exclude": [{"class": a, "count": count[a] + 1}, {"class": b, "count": count[b] + 1}],
                 "prompt": f"A photo of {NUMBER_WORDS[count[a]]} {ca} {_n(count[a], a).split(' ', 1)[1]} and "
                           f"{NUMBER_WORDS[count[b]]} {cb} {_n(count[b], b).split(' ', 1)[1]}"}
    elif tag in ("color_spatial_attr", "size_spatial_attr", "spatial_count_attr"):
        m = _spatial_prompt(scene, tag, count, single, shapes, rng)
    elif tag == "multi_object_count_attr" and len(shapes) >= 2:
        chosen = shapes[: min(len(shapes), rng.choice((2, 3)))]
        words = [_n(count[s], s) for s in chosen]
        text = f"{words[0]} and {words[1]}" if len(words) == 2 else f"{words[0]}, {words[1]}, and {words[2]}"
        m = {"include": [{"class": s, "count": count[s]} for s in chosen],
             "exclude": [{"class": s, "count": count[s] + 1} for s in chosen], "prompt": f"A photo of {text}"}
    if m is None:
        return None
    m = {"tag": tag, **m}
    return m if judge_scene(m, objs, n).correct else None


def _spatial_prompt(scene, tag, count, single, shapes, rng) -> dict | None:
    n = scene.image_size
    pairs = [("left", "right"), ("right", "left"), ("above", "below"), ("below", "above")]
    rng.shuffle(pairs)

    def region_of(shape):
        ds = [Detection.from_obj(o, n) for o in scene.objects if o.shape == shape]
        return [r for r in ("left", "right", "above", "below") if all(in_region(d, r, n) for d in ds)]

    if tag == "spatial_count_attr":
        for r1, r2 in pairs:
            a = [s for s in shapes if r1 in region_of(s)]
            b = [s for s in shapes if r2 in region_of(s) and s not in a[:1]]
            if a and b:
                sa, sb = a[0], b[0]
                return {"include": [{"class": sa, "count": count[sa], "region": r1}, {"class": sb, "count": count[sb], "region": r2}],
                        "exclude": [{"class": sa, "count": count[sa] + 1}, {"class": sb, "count": count[sb] + 1}],
                        "prompt": f"A photo of {_n(count[sa], sa)} on the {r1} and {_n(count[sb], sb)} on the {r2}"}
        return None
    for r1, r2 in pairs:
        a = [o for o in single if r1 in region_of(o.shape)]
        b = [o for o in single if r2 in region_of(o.shape) and o not in a[:1]]
        if not (a and b):
            continue
        oa, ob = a[0], b[0]
        if tag == "color_spatial_attr":
            return {"include": [{"class": oa.shape, "count": 1, "color": oa.color, "region": r1},
                                {"class": ob.shape, "count": 1, "color": ob.color, "region": r2}],
                    "prompt": f"A photo of {oa.color} {oa.shape} on the {r1} and {ob.color} {ob.shape} on the {r2}"}
        if oa.size != ob.size:
            s1, s2 = ("larger", "smaller") if oa.size == "large" else ("smaller", "larger")
            return {"include": [{"class": oa.shape, "count": 1, "size": s1, "region": r1},
                                {"class": ob.shape, "count": 1, "size": s2, "region": r2}],
                    "prompt": f"A photo of a {s1} {oa.shape} on the {r1} and a {s2} {ob.shape} on the {r2}"}
    return None


def questions(scene: Scene, rng: random.Random, k: int = 1) -> list[tuple[str, str, str]]:
    """k random (question type, question, answer) triples about the scene."""
    n = scene.image_size
    count = Counter(o.shape for o in scene.objects)
    single = [o for o in scene.objects if count[o.shape] == 1]
    by_colour = Counter(o.color for o in scene.objects)
    unique_colour = [o for o in scene.objects if by_colour[o.color] == 1]
    out = []
    while len(out) < k:
        qtype = rng.choice(QUESTION_TYPES)
        if qtype == "count":
            s = rng.choice(SHAPES)
            out.append((qtype, f"How many {plural(s)} are there?", NUMBER_WORDS.get(count[s], "zero") if count[s] else "zero"))
        elif qtype == "color" and single:
            o = rng.choice(single)
            out.append((qtype, f"What color is the {o.shape}?", o.color))
        elif qtype == "shape" and unique_colour:
            o = rng.choice(unique_colour)
            out.append((qtype, f"What shape is the {o.color} object?", o.shape))
        elif qtype == "size" and single:
            o = rng.choice(single)
            out.append((qtype, f"Is the {o.shape} small or large?", o.size))
        elif qtype == "relation" and len(single) >= 2:
            a, b = rng.sample(single, 2)
            rel = rng.choice(RELATIONS)
            yes = rel in relative_position(Detection.from_obj(a, n), Detection.from_obj(b, n))
            out.append((qtype, f"Is the {a.shape} {rel} the {b.shape}?", "yes" if yes else "no"))
        elif qtype == "exists":
            s, c = rng.choice(SHAPES), rng.choice(COLOR_NAMES)
            if rng.random() < 0.5 and scene.objects:  # ask about a present object half the time
                o = rng.choice(scene.objects)
                s, c = o.shape, o.color
            yes = any(o.shape == s and o.color == c for o in scene.objects)
            out.append((qtype, f"Is there {_a(c + ' ' + s)}?", "yes" if yes else "no"))
    return out
