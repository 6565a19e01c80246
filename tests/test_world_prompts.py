"""Prompt suites, their splits, the scene sampler and captions."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gvu.world.captions import true_prompt
from gvu.world.evaluator import detect
from gvu.world.geneval_io import validate_metadata
from gvu.world.prompts import (GENEVAL_TAG_COUNTS, GENEVALPP_TAG_COUNTS, HELD_OUT_PAIRS, SMALL_TAGS,
                               compositions, is_ood, make_suite, split_of)
from gvu.world.rules import judge, judge_scene
from gvu.world.sampler import sample_scene
from gvu.world.scene import render
from gvu.world.vocab import GENEVAL_TAGS, GENEVALPP_TAGS, SUITES


@pytest.fixture(scope="module")
def suites():
    """{(suite, split): prompts}; train is large so that rare compositions would show up if they leaked."""
    return {(s, sp): make_suite(s, sp, n=n, seed=0)
            for s in SUITES for sp, n in (("train", 3000), ("eval", None), ("ood", 300))}


def test_eval_split_has_the_benchmarks_size_and_tag_counts(suites):
    assert Counter(m["tag"] for m in suites[("geneval", "eval")]) == GENEVAL_TAG_COUNTS
    assert Counter(m["tag"] for m in suites[("genevalpp", "eval")]) == GENEVALPP_TAG_COUNTS


def test_every_prompt_is_a_valid_nano_world_prompt_of_its_suite(suites):
    for (suite, split), prompts in suites.items():
        for i, m in enumerate(prompts):
            validate_metadata(m, f"{suite}/{split}", i + 1)
            assert m["tag"] in SUITES[suite]


def test_no_held_out_composition_in_train_or_eval(suites):
    for (suite, split), prompts in suites.items():
        if split in ("train", "eval"):
            assert not [m["prompt"] for m in prompts if is_ood(m)], (suite, split)


def test_ood_prompts_all_name_a_held_out_composition(suites):
    for suite in SUITES:
        ood = suites[(suite, "ood")]
        assert ood and all(is_ood(m) for m in ood)
        # both kinds of held-out composition occur where the suite has them
        assert any(compositions(m)[0] & HELD_OUT_PAIRS for m in ood)
    assert any(compositions(m)[1] for m in suites[("geneval", "ood")])


def test_eval_and_train_prompts_are_disjoint_except_the_small_tags(suites):
    for suite in SUITES:
        train = {m["prompt"] for m in suites[(suite, "train")] if m["tag"] not in SMALL_TAGS[suite]}
        ev = {m["prompt"] for m in suites[(suite, "eval")] if m["tag"] not in SMALL_TAGS[suite]}
        assert train and ev and not train & ev, suite


def test_split_of_agrees_with_the_split_a_prompt_was_drawn_for(suites):
    for (suite, split), prompts in suites.items():
        assert all(split in split_of(m, suite).split("+") for m in prompts)


def test_suites_are_reproducible_from_their_seed():
    assert make_suite("geneval", "train", 50, seed=7) == make_suite("geneval", "train", 50, seed=7)
    assert make_suite("geneval", "train", 50, seed=7) != make_suite("geneval", "train", 50, seed=8)


def test_sampled_scenes_satisfy_their_prompt_and_respect_forbidden_pairs(suites):
    rng = random.Random(0)
    for suite in SUITES:
        for m in suites[(suite, "eval")][:120]:
            scene = sample_scene(m, rng, forbid=HELD_OUT_PAIRS)
            assert judge_scene(m, list(scene.objects), 64).correct, m["prompt"]
            named = compositions(m)[0]  # a prompt may name a pair itself; only free colours are restricted
            assert not {(o.color, o.shape) for o in scene.objects} & (HELD_OUT_PAIRS - named), m["prompt"]


def test_true_prompts_are_true_of_their_scene_and_of_its_rendering(suites):
    rng = random.Random(0)
    scenes = [sample_scene(m, rng) for s in SUITES for m in suites[(s, "train")][:150]]
    made = Counter()
    for scene in scenes:
        detections = detect(render(scene))  # once per scene; each prompt is then judged on them
        for suite, tags in (("geneval", GENEVAL_TAGS), ("genevalpp", GENEVALPP_TAGS)):
            for tag in tags:
                m = true_prompt(scene, suite, tag, rng)
                if m is None:
                    continue
                made[(suite, tag)] += 1
                assert m["tag"] == tag and m["prompt"]
                validate_metadata({**m}, "true_prompt", 1)
                assert judge_scene(m, list(scene.objects), 64).correct, m["prompt"]
                assert judge(m, detections, 64).correct, m["prompt"]
    missing = [(s, t) for s, tags in (("geneval", GENEVAL_TAGS), ("genevalpp", GENEVALPP_TAGS))
               for t in tags if not made[(s, t)]]
    assert not missing, f"true_prompt never produced {missing}"
