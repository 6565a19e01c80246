"""Prompt suites in GenEval's metadata format, over the nano world's vocabulary, and their named splits.

Each prompt is a dict with GenEval's keys: tag, include [{class, count, color?, position?: [relation, index],
region?, size?}], exclude?, prompt. Templates follow GenEval's (and GenEval++'s, as shipped with the official
GvU code: "on the above" included). Counts are exact: every counted class carries an exclude of count + 1,
as GenEval's counting prompts do.

Splits (`split_of`):
  ood   - the prompt names a held-out composition: a colour-shape pair in HELD_OUT_PAIRS, or a spatial
          configuration in HELD_OUT_RELATIONS (in either phrasing: "A left of B" is "B right of A");
  eval  - otherwise, when a hash of the prompt text falls in EVAL_PERCENT; disjoint from train, except for
          tags with fewer than SMALL_TAG distinct prompts (single_object, counting, two_object, ...), which
          have too few prompts to hold any out and are shared;
  train - the rest.
"""

from __future__ import annotations

import hashlib
import random

from gvu.world.vocab import (COLOR_NAMES, GENEVALPP_TAGS, MAX_COUNT, NUMBER_WORDS,
                             RELATIONS, SHAPES, SUITES, plural)

HELD_OUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "star"), ("blue", "heart"), ("green", "triangle"), ("yellow", "cross"), ("purple", "circle"),
    ("orange", "square"), ("pink", "star"), ("brown", "heart"), ("black", "triangle"), ("white", "cross"),
})
# (target, relation, reference); the mirrored phrasing is held out too
HELD_OUT_RELATIONS: frozenset[tuple[str, str, str]] = frozenset({
    ("circle", "left of", "square"), ("star", "above", "triangle"), ("heart", "right of", "cross"),
    ("square", "below", "star"), ("triangle", "left of", "heart"), ("cross", "above", "circle"),
})
MIRROR = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
SPLITS = ("train", "eval", "ood")
EVAL_PERCENT = 25
SMALL_TAG = 100  # tags with fewer distinct prompts than this are shared between train and eval

# GenEval's per-tag prompt counts (553 in all); eval splits keep these proportions.
GENEVAL_TAG_COUNTS = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
                      "position": 100, "color_attr": 100}
GENEVALPP_TAG_COUNTS = {t: 40 for t in GENEVALPP_TAGS}
SMALL_TAGS = {"geneval": {"single_object", "two_object", "counting", "colors"}, "genevalpp": {"counting"}}
OOD_TAGS = {"geneval": ("colors", "position", "color_attr"),
            "genevalpp": ("color_attr", "color_count_attr", "color_spatial_attr")}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _n(count: int, shape: str) -> str:
    return f"{NUMBER_WORDS[count]} {shape if count == 1 else plural(shape)}"


def _exact(shape: str, count: int) -> dict:
    return {"class": shape, "count": count + 1}


def make_prompt(suite: str, tag: str, rng: random.Random) -> dict:
    """One random prompt of `tag` in `suite` ("geneval" or "genevalpp")."""
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    if tag not in SUITES[suite]:
        raise ValueError(f"unknown tag {tag!r} for suite {suite}; its tags are {', '.join(SUITES[suite])}")
    return (_geneval if suite == "geneval" else _genevalpp)(tag, rng)


def _geneval(tag: str, rng: random.Random) -> dict:
    a, b = rng.sample(SHAPES, 2)
    c1, c2 = rng.choice(COLOR_NAMES), rng.choice(COLOR_NAMES)
    if tag == "single_object":
        return {"tag": tag, "include": [{"class": a, "count": 1}], "prompt": f"a photo of {_a(a)}"}
    if tag == "two_object":
        return {"tag": tag, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of {_a(a)} and {_a(b)}"}
    if tag == "counting":
        k = rng.randint(2, MAX_COUNT)
        return {"tag": tag, "include": [{"class": a, "count": k}], "exclude": [_exact(a, k)],
                "prompt": f"a photo of {NUMBER_WORDS[k]} {plural(a)}"}
    if tag == "colors":
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c1}],
                "prompt": f"a photo of {_a(c1 + ' ' + a)}"}
    if tag == "position":
        rel = rng.choice(RELATIONS)  # "a photo of a {a} {rel} a {b}": b is the reference, listed first
        return {"tag": tag, "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                "prompt": f"a photo of {_a(a)} {rel} {_a(b)}"}
    if tag == "color_attr":
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}],
                "prompt": f"a photo of {_a(c1 + ' ' + a)} and {_a(c2 + ' ' + b)}"}
    raise AssertionError(tag)


def _regions(rng: random.Random) -> tuple[str, str]:
    pair = rng.choice([("left", "right"), ("above", "below")])
    return pair if rng.random() < 0.5 else pair[::-1]


def _genevalpp(tag: str, rng: random.Random) -> dict:
    a, b, c = rng.sample(SHAPES, 3)
    c1, c2, c3 = (rng.choice(COLOR_NAMES) for _ in range(3))
    if tag == "color_attr":
        return {"tag": tag, "include": [{"class": s, "count": 1, "color": col} for s, col in ((a, c1), (b, c2), (c, c3))],
                "prompt": f"A photo of {_a(c1 + ' ' + a)}, {_a(c2 + ' ' + b)}, and {_a(c3 + ' ' + c)}"}
    if tag == "counting":
        k = rng.randint(2, MAX_COUNT)
        return {"tag": tag, "include": [{"class": a, "count": k}], "exclude": [_exact(a, k)],
                "prompt": f"A photo of {NUMBER_WORDS[k]} {plural(a)}"}
    if tag == "color_count_attr":
        k1, k2 = rng.randint(1, 3), rng.randint(1, 3)
        return {"tag": tag, "include": [{"class": a, "count": k1, "color": c1}, {"class": b, "count": k2, "color": c2}],
                "exclude": [_exact(a, k1), _exact(b, k2)],
                "prompt": f"A photo of {NUMBER_WORDS[k1]} {c1} {_n(k1, a).split(' ', 1)[1]} and "
                          f"{NUMBER_WORDS[k2]} {c2} {_n(k2, b).split(' ', 1)[1]}"}
    if tag == "color_spatial_attr":
        r1, r2 = _regions(rng)
        return {"tag": tag, "include": [{"class": a, "count": 1, "color": c1, "region": r1},
                                        {"class": b, "count": 1, "color": c2, "region": r2}],
                "prompt": f"A photo of {c1} {a} on the {r1} and {c2} {b} on the {r2}"}
    if tag == "spatial_count_attr":
        r1, r2 = _regions(rng)
        k1, k2 = rng.randint(1, 3), rng.randint(1, 3)
        return {"tag": tag, "include": [{"class": a, "count": k1, "region": r1}, {"class": b, "count": k2, "region": r2}],
                "exclude": [_exact(a, k1), _exact(b, k2)],
                "prompt": f"A photo of {_n(k1, a)} on the {r1} and {_n(k2, b)} on the {r2}"}
    if tag == "size_spatial_attr":
        r1, r2 = _regions(rng)
        s1, s2 = ("larger", "smaller") if rng.random() < 0.5 else ("smaller", "larger")
        return {"tag": tag, "include": [{"class": a, "count": 1, "size": s1, "region": r1},
                                        {"class": b, "count": 1, "size": s2, "region": r2}],
                "prompt": f"A photo of a {s1} {a} on the {r1} and a {s2} {b} on the {r2}"}
    if tag == "multi_object_count_attr":
        shapes = [a, b, c][: rng.choice((2, 3))]
        counts = [rng.randint(1, 2) for _ in shapes]
        words = [_n(k, s) for k, s in zip(counts, shapes)]
        text = f"{words[0]} and {words[1]}" if len(words) == 2 else f"{words[0]}, {words[1]}, and {words[2]}"
        return {"tag": tag, "include": [{"class": s, "count": k} for s, k in zip(shapes, counts)],
                "exclude": [_exact(s, k) for s, k in zip(shapes, counts)], "prompt": f"A photo of {text}"}
    raise AssertionError(tag)


def compositions(metadata: dict) -> tuple[set[tuple[str, str]], set[tuple[str, str, str]]]:
    """The colour-shape pairs and (target, relation, reference) triples a prompt names."""
    inc = metadata.get("include", [])
    pairs = {(r["color"], r["class"]) for r in inc if "color" in r}
    triples = {(r["class"], r["position"][0], inc[int(r["position"][1])]["class"]) for r in inc if "position" in r}
    return pairs, triples


def is_ood(metadata: dict) -> bool:
    pairs, triples = compositions(metadata)
    held = HELD_OUT_RELATIONS | {(b, MIRROR[r], a) for a, r, b in HELD_OUT_RELATIONS}
    return bool(pairs & HELD_OUT_PAIRS or triples & held)


def split_of(metadata: dict, suite: str) -> str:
    if is_ood(metadata):
        return "ood"
    if metadata["tag"] in SMALL_TAGS[suite]:
        return "train+eval"
    h = int(hashlib.sha256(metadata["prompt"].encode()).hexdigest()[:8], 16)
    return "eval" if h % 100 < EVAL_PERCENT else "train"


def make_suite(suite: str, split: str, n: int | None = None, seed: int = 0, progress: bool = False) -> list[dict]:
    """`n` prompts of `split` (train / eval / ood) in GenEval's tag proportions; reproducible from `seed`.

    The eval split defaults to GenEval's size (553 prompts; 280 for GenEval++). Distinct prompts are preferred;
    a tag with fewer distinct prompts than asked for repeats them. progress: a bar on stderr (large suites take
    minutes: about 800 prompts a second on a busy 2-core CPU).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)}")
    base = GENEVAL_TAG_COUNTS if suite == "geneval" else GENEVALPP_TAG_COUNTS
    tags = OOD_TAGS[suite] if split == "ood" else SUITES[suite]
    weights = {t: base[t] for t in tags}
    n = sum(weights.values()) if n is None else n
    if n < 1:
        raise ValueError(f"the number of prompts must be at least 1, got {n}")
    total = sum(weights.values())
    per_tag = {t: n * w // total for t, w in weights.items()}
    for t in sorted(tags, key=lambda t: -weights[t])[: n - sum(per_tag.values())]:
        per_tag[t] += 1
    rng = random.Random(f"{suite}/{split}/{seed}")
    out = []
    from tqdm import tqdm

    bar = tqdm(total=n, desc=f"{suite} {split} prompts", unit="prompt", disable=not progress, leave=False)
    for tag in tags:
        seen: set[str] = set()
        got: list[dict] = []
        tries = 0
        while len(got) < per_tag[tag]:
            tries += 1
            m = make_prompt(suite, tag, rng)
            if split not in split_of(m, suite).split("+"):
                continue
            if m["prompt"] in seen and tries < 200 * per_tag[tag]:
                continue  # prefer distinct prompts; give up preferring once the tag's prompts run out
            seen.add(m["prompt"])
            got.append(m)
            bar.update(1)
        out.extend(got)
    bar.close()
    rng.shuffle(out)
    return out
