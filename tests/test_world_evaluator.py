"""The exact evaluator on clean and degraded renderings, and against the wrong prompt.

Thresholds on degraded images sit a little below what the fixed seeds measure (noted per test), so a real
regression fails them; the full measurement is benchmarks/evaluator_accuracy.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from gvu.world.degrade import Degradation, degrade
from gvu.world.evaluator import detect, evaluate_image
from gvu.world.prompts import make_suite
from gvu.world.rules import judge, judge_scene
from gvu.world.sampler import sample_scene
from gvu.world.scene import Obj, Scene, render
from gvu.world.vocab import BACKGROUND, COLORS, SHAPES, SIZES


def single_object_scenes():
    return [Scene((Obj(s, c, z, 30.0, 34.0),)) for s in SHAPES for c in COLORS for z in SIZES]


def identified(scene: Scene, image) -> bool:
    (o,) = scene.objects
    d = detect(image)
    return len(d) == 1 and (d[0].shape, d[0].color, d[0].size_name(64)) == (o.shape, o.color, o.size)


def test_every_shape_colour_and_size_is_identified_on_clean_renderings():
    for scene in single_object_scenes():
        d = detect(render(scene))
        (o,) = scene.objects
        assert len(d) == 1, scene
        assert (d[0].shape, d[0].color, d[0].size_name(64)) == (o.shape, o.color, o.size)
        assert abs(d[0].x - o.x) <= 0.5 and abs(d[0].y - o.y) <= 0.5


def test_single_objects_are_identified_after_blur_noise_jpeg_and_specks():
    rng = np.random.default_rng(0)
    scenes = single_object_scenes()
    hits = sum(identified(s, degrade(render(s), rng)) for s in scenes)
    assert hits >= 0.97 * len(scenes), f"{hits}/{len(scenes)}"  # measured 119/120 at seed 0


def test_eval_prompts_are_judged_correct_after_degradation():
    rng, nrng = random.Random(1), np.random.default_rng(1)
    prompts = make_suite("geneval", "eval", n=80, seed=3) + make_suite("genevalpp", "eval", n=70, seed=3)
    ok = sum(evaluate_image(m, degrade(render(sample_scene(m, rng)), nrng)).correct for m in prompts)
    assert ok >= 0.95 * len(prompts), f"{ok}/{len(prompts)}"  # the benchmark measures ~98% on 3,332 images


def test_degraded_images_of_a_prompt_are_still_rejected_for_a_different_prompt():
    rng, nrng = random.Random(2), np.random.default_rng(2)
    prompts = make_suite("geneval", "eval", n=60, seed=4)
    wrong = rejected = 0
    for a, b in zip(prompts, prompts[1:] + prompts[:1]):
        scene = sample_scene(a, rng)
        if judge_scene(b, list(scene.objects), 64).correct:
            continue  # b happens to be true of a's scene too; not a mismatch
        wrong += 1
        rejected += not evaluate_image(b, degrade(render(scene), nrng)).correct
    assert wrong >= 50 and rejected == wrong


def test_stray_specks_alone_are_not_objects():
    img = Image.new("RGB", (64, 64), BACKGROUND)
    spoiled = degrade(img, np.random.default_rng(0), Degradation(specks=30))
    assert detect(spoiled) == []


def test_clean_renderings_agree_with_the_symbolic_judge_on_mismatched_prompts():
    rng = random.Random(5)
    prompts = make_suite("genevalpp", "eval", n=70, seed=5)
    for a in prompts:
        scene = sample_scene(a, rng)
        dets = detect(render(scene))
        b = rng.choice(prompts)
        assert judge(b, dets, 64).correct == judge_scene(b, list(scene.objects), 64).correct, (a, b)


@pytest.mark.parametrize("size", [32, 96])
def test_other_image_sizes_are_judged_too(size):
    rng = random.Random(6)
    for m in make_suite("geneval", "eval", n=30, seed=6):
        assert evaluate_image(m, render(sample_scene(m, rng, image_size=size))).correct, m["prompt"]


def test_non_square_images_are_refused():
    with pytest.raises(ValueError, match="square"):
        evaluate_image({"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "x"},
                       Image.new("RGB", (64, 48), BACKGROUND))


def test_the_template_cache_detects_exactly_what_the_uncached_templates_do(monkeypatch):
    # the cache only skips redrawing and reblurring templates: detections (floats included) must be identical,
    # on clean and degraded images, whether the cache is empty, warm, or bypassed
    from gvu.world import evaluator

    rng, nrng = random.Random(5), np.random.default_rng(5)
    prompts = make_suite("geneval", "eval", seed=0)
    clean = [render(sample_scene(rng.choice(prompts), rng, 64)) for _ in range(12)]
    images = clean + [degrade(im, nrng) for im in clean]
    evaluator._templates.cache_clear()
    cold = [detect(im) for im in images]
    warm = [detect(im) for im in images]
    assert evaluator._templates.cache_info().hits > 0
    monkeypatch.setattr(evaluator, "_templates", evaluator._templates.__wrapped__)
    assert [detect(im) for im in images] == cold == warm
    assert sum(len(d) for d in cold) >= len(images)  # objects were found, so templates were compared


def test_cached_templates_cannot_be_changed_in_place():
    from gvu.world import evaluator

    t = evaluator._templates("circle", 6.0, 6.0, 4.0, 4.0, 12, 12)
    assert len(t) == len(evaluator.BLUR_SIGMAS) and t[0].shape == (12, 12)
    with pytest.raises(ValueError):
        t[1][0, 0] = 1.0


# Known gaps, found by a review (2026-11-28). The sampler keeps a gap between objects, so renderings never touch and
# every test above holds; generated images can touch. Both tests must fail until the evaluator is fixed (strict
# xfail); a fix changes verdicts on generated images, so it lands with re-measured README numbers
# (benchmarks/evaluator_change.py measures what a change does to a model's scores).

@pytest.mark.xfail(strict=True, reason="known gap: touching objects of one colour merge into one blob, which a "
                                       "stretched template still fits, so a wrong count can be judged right")
def test_two_touching_squares_of_one_colour_are_not_one_square():
    scene = Scene((Obj("square", "red", "small", 12, 12), Obj("square", "red", "small", 28, 12),
                   Obj("square", "red", "small", 40, 48)))  # the first two touch: three squares
    md = {"tag": "counting", "include": [{"class": "square", "count": 2}], "exclude": [{"class": "square", "count": 3}],
          "prompt": "a photo of two squares"}
    assert not evaluate_image(md, render(scene)).correct


@pytest.mark.xfail(strict=True, reason="known gap: a colour needs 20% of its component's core, so a small object "
                                       "touching a large one of another colour is lost")
def test_a_small_star_touching_a_large_square_is_still_found():
    scene = Scene((Obj("square", "red", "large", 20, 32), Obj("star", "blue", "small", 40, 32)))
    assert sorted(d.shape for d in detect(render(scene))) == ["square", "star"]
