"""Hand-built scenes with known answers for every tag of both suites.

Each case is judged twice, and both must give the known answer: by the symbolic judge on the scene's true
objects, and by the exact evaluator on the rendered image (64 px; small objects have half-width 8 px, large 12).
"""

from __future__ import annotations

import pytest

from gvu.world.evaluator import evaluate_image
from gvu.world.rules import Detection, judge_scene, relative_position
from gvu.world.scene import Obj, Scene, render
from gvu.world.vocab import GENEVAL_TAGS, GENEVALPP_TAGS


def O(shape: str, color: str, x: float, y: float, size: str = "small") -> Obj:  # noqa: E743
    return Obj(shape, color, size, float(x), float(y))


def inc(cls: str, count: int = 1, **kw) -> dict:
    return {"class": cls, "count": count, **kw}


def exactly(cls: str, count: int) -> dict:
    return {"class": cls, "count": count + 1}


# (suite, tag, metadata, objects, expected verdict, what the case shows)
CASES = [
    # ---- GenEval
    ("geneval", "single_object", {"include": [inc("circle")]}, [O("circle", "red", 32, 32)], True, "present"),
    ("geneval", "single_object", {"include": [inc("circle")]}, [O("square", "red", 32, 32)], False, "wrong shape"),
    ("geneval", "two_object", {"include": [inc("circle"), inc("star")]},
     [O("circle", "red", 16, 32), O("star", "blue", 48, 32)], True, "both present"),
    ("geneval", "two_object", {"include": [inc("circle"), inc("star")]},
     [O("circle", "red", 16, 32), O("square", "blue", 48, 32)], False, "one missing"),
    ("geneval", "counting", {"include": [inc("star", 3)], "exclude": [exactly("star", 3)]},
     [O("star", "green", 14, 16), O("star", "green", 48, 16), O("star", "pink", 32, 48)], True, "exactly three"),
    ("geneval", "counting", {"include": [inc("star", 3)], "exclude": [exactly("star", 3)]},
     [O("star", "green", 14, 14), O("star", "green", 48, 14), O("star", "pink", 14, 48), O("star", "red", 48, 48)],
     False, "four is not three (the exclude)"),
    ("geneval", "counting", {"include": [inc("star", 3)], "exclude": [exactly("star", 3)]},
     [O("star", "green", 14, 16), O("star", "green", 48, 16)], False, "two is not three"),
    ("geneval", "colors", {"include": [inc("heart", color="blue")]}, [O("heart", "blue", 32, 32, "large")], True, "colour"),
    ("geneval", "colors", {"include": [inc("heart", color="blue")]}, [O("heart", "green", 32, 32, "large")], False,
     "wrong colour"),
    ("geneval", "position", {"include": [inc("triangle"), inc("cross", position=["left of", 0])]},
     [O("cross", "white", 14, 32), O("triangle", "black", 50, 32)], True, "left of"),
    ("geneval", "position", {"include": [inc("triangle"), inc("cross", position=["left of", 0])]},
     [O("cross", "white", 50, 32), O("triangle", "black", 14, 32)], False, "violated: right of"),
    # within GenEval's margin: the cross is 2 px left of the triangle, less than 0.1 x (16 + 16) = 3.2 px
    ("geneval", "position", {"include": [inc("triangle"), inc("cross", position=["left of", 0])]},
     [O("cross", "white", 30, 12), O("triangle", "black", 32, 50)], False, "margin: 2 px is not 'left of'"),
    ("geneval", "position", {"include": [inc("triangle"), inc("cross", position=["above", 0])]},
     [O("cross", "white", 30, 12), O("triangle", "black", 32, 50)], True, "the same scene: 'above'"),
    ("geneval", "color_attr", {"include": [inc("circle", color="red"), inc("square", color="blue")]},
     [O("circle", "red", 16, 32), O("square", "blue", 48, 32)], True, "both colours bound"),
    ("geneval", "color_attr", {"include": [inc("circle", color="red"), inc("square", color="blue")]},
     [O("circle", "blue", 16, 32), O("square", "red", 48, 32)], False, "colours swapped between objects"),
    # ---- GenEval++
    ("genevalpp", "color_attr",
     {"include": [inc("circle", color="red"), inc("star", color="yellow"), inc("cross", color="purple")]},
     [O("circle", "red", 14, 14), O("star", "yellow", 48, 14), O("cross", "purple", 32, 48)], True, "three colours"),
    ("genevalpp", "color_attr",
     {"include": [inc("circle", color="red"), inc("star", color="yellow"), inc("cross", color="purple")]},
     [O("circle", "red", 14, 14), O("star", "orange", 48, 14), O("cross", "purple", 32, 48)], False, "one wrong"),
    ("genevalpp", "counting", {"include": [inc("heart", 2)], "exclude": [exactly("heart", 2)]},
     [O("heart", "red", 16, 32), O("heart", "blue", 48, 32)], True, "exactly two"),
    ("genevalpp", "counting", {"include": [inc("heart", 2)], "exclude": [exactly("heart", 2)]},
     [O("heart", "red", 14, 16), O("heart", "blue", 48, 16), O("heart", "blue", 32, 48)], False, "three"),
    ("genevalpp", "color_count_attr",
     {"include": [inc("circle", 2, color="red"), inc("star", 1, color="blue")],
      "exclude": [exactly("circle", 2), exactly("star", 1)]},
     [O("circle", "red", 14, 16), O("circle", "red", 48, 16), O("star", "blue", 32, 48)], True, "counts and colours"),
    ("genevalpp", "color_count_attr",
     {"include": [inc("circle", 2, color="red"), inc("star", 1, color="blue")],
      "exclude": [exactly("circle", 2), exactly("star", 1)]},
     [O("circle", "red", 14, 16), O("circle", "green", 48, 16), O("star", "blue", 32, 48)], False,
     "right count, one circle the wrong colour"),
    ("genevalpp", "color_spatial_attr",
     {"include": [inc("circle", color="red", region="left"), inc("square", color="blue", region="right")]},
     [O("circle", "red", 16, 32), O("square", "blue", 48, 32)], True, "regions"),
    ("genevalpp", "color_spatial_attr",
     {"include": [inc("circle", color="red", region="left"), inc("square", color="blue", region="right")]},
     [O("circle", "red", 48, 32), O("square", "blue", 16, 32)], False, "regions swapped"),
    ("genevalpp", "spatial_count_attr",
     {"include": [inc("star", 2, region="above"), inc("cross", 1, region="below")],
      "exclude": [exactly("star", 2), exactly("cross", 1)]},
     [O("star", "red", 16, 14), O("star", "green", 48, 14), O("cross", "blue", 32, 48)], True, "counts in regions"),
    ("genevalpp", "spatial_count_attr",
     {"include": [inc("star", 2, region="above"), inc("cross", 1, region="below")],
      "exclude": [exactly("star", 2), exactly("cross", 1)]},
     [O("star", "red", 16, 14), O("star", "green", 16, 48), O("cross", "blue", 48, 48)], False, "one star below"),
    ("genevalpp", "size_spatial_attr",
     {"include": [inc("triangle", size="larger", region="left"), inc("heart", size="smaller", region="right")]},
     [O("triangle", "orange", 16, 32, "large"), O("heart", "pink", 48, 32, "small")], True, "sizes and regions"),
    ("genevalpp", "size_spatial_attr",
     {"include": [inc("triangle", size="larger", region="left"), inc("heart", size="smaller", region="right")]},
     [O("triangle", "orange", 16, 32, "small"), O("heart", "pink", 48, 32, "large")], False, "sizes swapped"),
    ("genevalpp", "multi_object_count_attr",
     {"include": [inc("circle", 1), inc("square", 2), inc("cross", 1)],
      "exclude": [exactly("circle", 1), exactly("square", 2), exactly("cross", 1)]},
     [O("circle", "red", 14, 14), O("square", "blue", 48, 14), O("square", "green", 14, 48),
      O("cross", "brown", 48, 48)], True, "every count exact"),
    ("genevalpp", "multi_object_count_attr",
     {"include": [inc("circle", 1), inc("square", 2), inc("cross", 1)],
      "exclude": [exactly("circle", 1), exactly("square", 2), exactly("cross", 1)]},
     [O("circle", "red", 12, 12), O("square", "blue", 52, 12), O("square", "green", 12, 52),
      O("cross", "brown", 52, 52), O("square", "yellow", 32, 32)], False, "one square too many"),
]


@pytest.mark.parametrize("suite,tag,meta,objs,expected,why", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'ok' if c[4] else 'wrong'}-{c[5]}" for c in CASES])
def test_hand_built_scene_is_judged_as_known(suite, tag, meta, objs, expected, why):
    meta = {"tag": tag, "prompt": why, **meta}
    scene = Scene(tuple(objs))
    assert judge_scene(meta, objs, 64).correct is expected, "symbolic judge"
    got = evaluate_image(meta, render(scene))
    assert got.correct is expected, f"evaluator on the rendering: {got.reason}"


def test_every_tag_of_both_suites_has_a_correct_and_an_incorrect_case():
    for suite, tags in (("geneval", GENEVAL_TAGS), ("genevalpp", GENEVALPP_TAGS)):
        for tag in tags:
            verdicts = {c[4] for c in CASES if c[:2] == (suite, tag)}
            assert verdicts == {True, False}, (suite, tag)


def test_relative_position_by_hand():
    # a at x=10, b at x=50, both half-width 8: offset (-40, 0); margin 0.1 x (16 + 16) = 3.2;
    # revised (-36.8, 0) / |offset| 40 = (-0.92, 0): left of only.
    a, b = Detection("circle", "red", 10, 32, 8, 8), Detection("circle", "red", 50, 32, 8, 8)
    assert relative_position(a, b) == {"left of"}
    assert relative_position(b, a) == {"right of"}
    # offset (-20, -15): revised (-16.8, -11.8) / 25 = (-0.672, -0.472): left of, not above (needs < -0.5)
    c = Detection("circle", "red", 30, 17, 8, 8)
    assert relative_position(c, Detection("circle", "red", 50, 32, 8, 8)) == {"left of"}
    # offset (-20, -20): revised (-16.8, -16.8) / 28.28 = (-0.594, -0.594): both
    d = Detection("circle", "red", 30, 12, 8, 8)
    assert relative_position(d, Detection("circle", "red", 50, 32, 8, 8)) == {"left of", "above"}
    # offset (-3, 0) is inside the 3.2 px margin: no relation at all
    e = Detection("circle", "red", 47, 32, 8, 8)
    assert relative_position(e, Detection("circle", "red", 50, 32, 8, 8)) == set()
