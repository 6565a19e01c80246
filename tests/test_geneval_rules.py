"""GenEval's rules (gvu.eval.geneval.rules) on hand-made detections, each at its edges.

The expected verdicts and reason strings are worked out by hand from djghosh13/geneval's evaluate_images.py.
"""

from __future__ import annotations

import pytest

from gvu.eval.geneval.rules import (Detection, MAX_OBJECTS_PER_CLASS, check_metadata, judge, keep_confident,
                                    relative_position)


def det(score, box=(0, 0, 10, 10)):
    return Detection(score=score, box=box)


def no_colors(name, objects):
    raise AssertionError("the colour classifier must not be called for this prompt")


def colors_by_score(table):
    """A colour classifier that names each object's colour from its score (hand-made detections)."""
    def classify(name, objects):
        return [table[o.score] for o in objects]
    return classify


def meta(tag, include, exclude=None):
    m = {"tag": tag, "prompt": "p", "include": include}
    if exclude is not None:
        m["exclude"] = exclude
    return m


# ------------------------------------------------------------------------------------------ thresholds


def test_a_score_of_exactly_0_3_is_dropped_and_just_above_is_kept():
    m = meta("single_object", [{"class": "dog", "count": 1}])
    assert not judge(m, {"dog": [det(0.3)]}, no_colors).correct
    v = judge(m, {"dog": [det(0.3)]}, no_colors)
    assert v.reason == "expected dog>=1, found 0" and v.kept == {}
    assert judge(m, {"dog": [det(0.3000001)]}, no_colors).correct


def test_the_counting_tag_keeps_only_scores_strictly_above_0_9():
    m = meta("counting", [{"class": "cat", "count": 2}], [{"class": "cat", "count": 3}])
    assert judge(m, {"cat": [det(0.95), det(0.9000001)]}, no_colors).correct
    v = judge(m, {"cat": [det(0.95), det(0.9)]}, no_colors)
    assert not v.correct and v.reason == "expected cat>=2, found 1"
    # the same 0.5 detection counts under any other tag
    assert keep_confident({"cat": [det(0.5)]}, "two_object") == {"cat": [det(0.5)]}
    assert keep_confident({"cat": [det(0.5)]}, "counting") == {}


def test_at_most_16_instances_a_class_are_kept_the_highest_scores_first():
    dets = [det(0.31 + 0.01 * i) for i in range(20)]
    kept = keep_confident({"cup": dets}, "single_object")["cup"]
    assert len(kept) == MAX_OBJECTS_PER_CLASS == 16
    assert [d.score for d in kept] == sorted((d.score for d in dets), reverse=True)[:16]
    # so an exclude clause of 17 can never fire, even with 20 confident cups
    m = meta("counting", [{"class": "cup", "count": 1}], [{"class": "cup", "count": 17}])
    assert judge(m, {"cup": [det(0.91 + 0.001 * i) for i in range(20)]}, no_colors).correct


# -------------------------------------------------------------------------------------------- counting


def test_counting_n_passes_with_n_and_fails_with_n_plus_one_or_n_minus_one():
    m = meta("counting", [{"class": "dog", "count": 3}], [{"class": "dog", "count": 4}])
    three = [det(0.99), det(0.98), det(0.97)]
    assert judge(m, {"dog": three}, no_colors).correct
    v = judge(m, {"dog": three + [det(0.96)]}, no_colors)
    assert not v.correct and v.reason == "expected dog<4, found 4"
    v = judge(m, {"dog": three[:2]}, no_colors)
    assert not v.correct and v.reason == "expected dog>=3, found 2"


def test_an_include_clause_alone_means_at_least_count():
    m = meta("two_object", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1}])
    assert judge(m, {"dog": [det(0.8), det(0.7)], "cat": [det(0.5)]}, no_colors).correct
    v = judge(m, {"dog": [det(0.8)]}, no_colors)
    assert v.reason == "expected cat>=1, found 0"


def test_exclude_counts_only_kept_detections_and_each_failure_is_one_reason_line():
    m = meta("single_object", [{"class": "dog", "count": 1}], [{"class": "cat", "count": 1}])
    assert judge(m, {"dog": [det(0.8)], "cat": [det(0.3)]}, no_colors).correct  # 0.3 is not kept
    v = judge(m, {"cat": [det(0.8), det(0.4)]}, no_colors)
    assert not v.correct and v.reason == "expected dog>=1, found 0\nexpected cat<1, found 2"


# ---------------------------------------------------------------------------------------------- colour


def test_colour_needs_the_requested_colour_to_win_count_times_among_the_top_count_objects():
    m = meta("colors", [{"class": "car", "count": 2, "color": "red"}])
    table = {0.9: "red", 0.8: "blue", 0.7: "red"}
    seen = []

    def classify(name, objects):
        seen.append((name, [o.score for o in objects]))
        return colors_by_score(table)(name, objects)

    v = judge(m, {"car": [det(0.7), det(0.9), det(0.8)]}, classify)
    assert seen == [("car", [0.9, 0.8])]  # the first `count` by score, not all three
    assert not v.correct and v.reason == "expected red car>=2, found 1 red; and 1 red, 1 blue"
    table[0.8] = "red"
    assert judge(m, {"car": [det(0.7), det(0.9), det(0.8)]}, colors_by_score(table)).correct


def test_the_colour_reason_lists_colours_in_geneval_order():
    m = meta("colors", [{"class": "car", "count": 3, "color": "green"}])
    table = {0.9: "white", 0.8: "blue", 0.7: "white"}
    v = judge(m, {"car": [det(0.9), det(0.8), det(0.7)]}, colors_by_score(table))
    assert v.reason == "expected green car>=3, found 0 green; and 1 blue, 2 white"


# -------------------------------------------------------------------------------------------- position


@pytest.mark.parametrize("dx,expected", [
    (3.99, set()),        # 10 px boxes: the margin takes 0.1 x (10 + 10) = 2 px; (3.99 - 2) / 3.99 < 0.5
    (4.0, set()),         # (4 - 2) / 4 = 0.5 exactly: not > 0.5
    (4.01, {"right of"}),
    (-4.01, {"left of"}),
    (2.0, set()),         # inside the margin: the shrunk offset is 0, "together"
])
def test_relative_position_margin_is_a_tenth_of_the_summed_box_sizes(dx, expected):
    b = det(0.9, (0, 0, 10, 10))
    a = det(0.9, (dx, 0, dx + 10, 10))
    assert relative_position(a, b) == expected


def test_relative_position_margin_scales_with_the_boxes_and_y_grows_downwards():
    b = det(0.9, (0, 0, 100, 100))
    # 100 px boxes: margin 20 px; a vertical offset of 39 px -> 19 / 39 < 0.5; 41 px -> 21 / 41 > 0.5
    assert relative_position(det(0.9, (0, 39, 100, 139)), b) == set()
    assert relative_position(det(0.9, (0, 41, 100, 141)), b) == {"below"}
    assert relative_position(det(0.9, (0, -41, 100, 59)), b) == {"above"}
    # diagonal (10, 10) with 10 px boxes: shrunk (8, 8) / 14.14 = 0.566 on both axes
    assert relative_position(det(0.9, (10, 10, 20, 20)), det(0.9, (0, 0, 10, 10))) == {"right of", "below"}


def position_prompt(relation="left of"):
    return meta("position", [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": [relation, 0]}])


def test_position_passes_when_the_relation_holds_and_names_the_true_relations_otherwise():
    dog, cat_left = det(0.9, (50, 0, 60, 10)), det(0.9, (0, 0, 10, 10))
    assert judge(position_prompt("left of"), {"dog": [dog], "cat": [cat_left]}, no_colors).correct
    v = judge(position_prompt("right of"), {"dog": [dog], "cat": [cat_left]}, no_colors)
    assert v.reason == "expected cat right of target, found left of target"
    cat_diag = det(0.9, (60, 10, 70, 20))  # offset (10, 10) from the dog: right of and below
    v = judge(position_prompt("above"), {"dog": [dog], "cat": [cat_diag]}, no_colors)
    assert v.reason == "expected cat above target, found right of and below target"
    v = judge(position_prompt("above"), {"dog": [dog], "cat": [det(0.9, (51, 0, 61, 10))]}, no_colors)
    assert v.reason == "expected cat above target, found  target"  # no relation: an empty join, as upstream


def test_position_without_a_matched_target_says_so_once():
    v = judge(position_prompt(), {"cat": [det(0.9)]}, no_colors)
    assert not v.correct and v.reason == "expected dog>=1, found 0\nno target for cat to be left of"


def test_position_is_checked_against_every_target_object_and_stops_at_the_first_failure():
    m = meta("position", [{"class": "dog", "count": 2}, {"class": "cat", "count": 1, "position": ["left of", 0]}])
    cat = det(0.9, (0, 0, 10, 10))
    dogs_right = [det(0.9, (50, 0, 60, 10)), det(0.8, (80, 0, 90, 10))]
    assert judge(m, {"dog": dogs_right, "cat": [cat]}, no_colors).correct
    dogs_one_left = [det(0.9, (50, 0, 60, 10)), det(0.8, (-50, 0, -40, 10))]
    v = judge(m, {"dog": dogs_one_left, "cat": [cat]}, no_colors)
    assert v.reason == "expected cat left of target, found right of target"


def test_position_is_not_checked_after_a_colour_failure():
    m = meta("color_attr", [{"class": "dog", "count": 1},
                            {"class": "cat", "count": 1, "color": "red", "position": ["right of", 0]}])
    v = judge(m, {"dog": [det(0.9, (50, 0, 60, 10))], "cat": [det(0.8, (0, 0, 10, 10))]},
              colors_by_score({0.8: "black"}))
    assert v.reason == "expected red cat>=1, found 0 red; and 1 black"


# ------------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("include,fragment", [
    ([{"class": "unicorn", "count": 1}], "'unicorn' is not one of GenEval's 80 COCO classes"),
    ([{"class": "dog", "count": 1, "color": "teal"}], "unknown colour 'teal'"),
    ([{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["near", 0]}], "unknown relation"),
    ([{"class": "dog", "count": 1, "position": ["left of", 1]}, {"class": "cat", "count": 1}], "must come before"),
    ([{"class": "dog", "count": 0}], "count must be at least 1"),
])
def test_metadata_the_rules_cannot_judge_is_refused(include, fragment):
    with pytest.raises(ValueError, match=fragment):
        check_metadata(meta("x", include), "f:1", frozenset({"dog", "cat"}))
