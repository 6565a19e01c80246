"""GenEval scoring on transformers: the detector's mmdet-2 pre/post-processing with hand-worked numbers, the folder
scorer on a deterministic fake detector (rules applied, results format, resume), the whole pipeline on a tiny
random Mask2Former and CLIP built from configs, and bad input refused before any model loads."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from gvu.errors import UserError
from gvu.eval.geneval import scorer as scorer_mod
from gvu.eval.geneval.detector import instances, mask_boxes, preprocess, resized_shape
from gvu.eval.geneval.rules import Detection
from gvu.world import geneval_io as gio

NAMES = gio.COCO_CLASS_NAMES


# ------------------------------------------------------------------------------------------ tiny models


def save_tiny_mask2former(path, id2label=None, favour="dog"):
    """A random Mask2Former (tiny Swin) whose class head always says `favour` (p ~ 0.996), so its instances
    pass GenEval's 0.3 threshold wherever a query's mask is non-empty."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig

    torch.manual_seed(0)
    labels = id2label or dict(enumerate(NAMES))
    swin = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                      out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = Mask2FormerConfig(backbone_config=swin, num_labels=len(labels), id2label=labels,
                            label2id={v: k for k, v in labels.items()}, hidden_dim=32, mask_feature_size=32,
                            feature_size=32, num_queries=12, encoder_layers=1, decoder_layers=2,
                            encoder_feedforward_dim=32, dim_feedforward=32, num_attention_heads=2)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    with torch.no_grad():
        model.class_predictor.weight.zero_()
        model.class_predictor.bias.zero_()
        if favour in labels.values():
            model.class_predictor.bias[list(labels.values()).index(favour)] = 10.0
    model.save_pretrained(str(path))
    return path


def save_tiny_clip(path):
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    torch.manual_seed(0)
    chars = list("abcdefghijklmnopqrstuvwxyz-")
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + chars + [c + "</w>" for c in chars])}
    text = dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32,
                  patch_size=8)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=8)).save_pretrained(str(path))
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return save_tiny_mask2former(root / "det"), save_tiny_clip(root / "clip")


# ----------------------------------------------------------------------------------------- GenEval folders

RED_DOG = {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"}
TWO_CUPS = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 3}],
            "prompt": "a photo of two cups"}
CAT_LEFT = {"tag": "position", "include": [{"class": "dog", "count": 1},
                                           {"class": "cat", "count": 1, "position": ["left of", 0]}],
            "prompt": "a photo of a cat left of a dog"}


def make_folder(root, prompts, images_per_prompt=2, size=(32, 32)):
    for i, m in enumerate(prompts):
        imgs = [Image.new("RGB", size, (10 * i, 40 * k, 90)) for k in range(images_per_prompt)]
        gio.write_prompt_folder(root, i, m, imgs)
    return root


def full_mask(box, size=32):
    m = np.zeros((size, size), bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def d(score, box):
    return Detection(score, tuple(float(v) for v in box), full_mask(box))


# What the fake detector sees, by the image's pixel colour (prompt i, sample k -> (10 i, 40 k, 90)).
FAKE = {
    (0, 0, 90): {"dog": [d(0.8, (2, 2, 12, 12))]},                               # red dog: correct
    (0, 40, 90): {"dog": [d(0.8, (20, 2, 30, 12))]},                             # a blue dog: wrong colour
    (10, 0, 90): {"cup": [d(0.95, (0, 0, 5, 5)), d(0.92, (10, 0, 15, 5))]},      # two confident cups
    (10, 40, 90): {"cup": [d(0.95, (0, 0, 5, 5)), d(0.92, (9, 0, 14, 5)), d(0.91, (20, 0, 25, 5)),
                           d(0.9, (25, 25, 30, 30))]},                            # three above 0.9 (one at 0.9)
    (20, 0, 90): {"dog": [d(0.7, (20, 10, 30, 20))], "cat": [d(0.6, (0, 10, 10, 20))]},   # cat left of dog
    (20, 40, 90): {"dog": [d(0.7, (0, 10, 10, 20))], "cat": [d(0.6, (20, 10, 30, 20))]},  # cat right of dog
}


class FakeDetector:
    calls = 0

    def detect(self, images, min_score=0.0):
        FakeDetector.calls += len(images)
        return [FAKE[im.getpixel((0, 0))] for im in images]


class FakeColors:
    def classify(self, image, name, objects):
        # the dog at x 2..12 is red, any other object blue
        return ["red" if o.box[0] == 2.0 else "blue" for o in objects]


@pytest.fixture
def fake_models(monkeypatch, models):
    FakeDetector.calls = 0
    monkeypatch.setattr(scorer_mod, "load_detector", lambda info, device: FakeDetector())
    monkeypatch.setattr(scorer_mod, "load_colors", lambda path, device: FakeColors())
    return models


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------------- detector


def test_mmdet_keep_ratio_resize_fits_1333_by_800_rounding_half_up():
    assert resized_shape(512, 512) == (800, 800)
    assert resized_shape(480, 640) == (800, 1067)  # 640 x 5/3 = 1066.67
    assert resized_shape(1000, 3000) == (444, 1333)  # the long side binds: 1000 x 1333/3000 = 444.3


def test_preprocess_normalises_with_imagenet_statistics_and_zero_pads_to_32():
    pixels, resized = preprocess([Image.new("RGB", (600, 400), (200, 100, 50))])  # -> 800 x 1200
    assert resized == (800, 1200) and pixels.shape == (1, 3, 800, 1216)
    expected = [(200 - 123.675) / 58.395, (100 - 116.28) / 57.12, (50 - 103.53) / 57.375]
    assert torch.allclose(pixels[0, :, 400, 600], torch.tensor(expected), atol=1e-5)
    assert pixels[0, :, :, 1200:].abs().max() == 0


def test_mask_boxes_are_tight_with_exclusive_far_edges_and_zero_for_empty_masks():
    m = torch.zeros(2, 6, 8, dtype=torch.bool)
    m[0, 1:4, 2:7] = True
    assert mask_boxes(m).tolist() == [[2.0, 1.0, 7.0, 4.0], [0.0, 0.0, 0.0, 0.0]]


def test_instances_score_is_class_probability_times_mean_mask_probability_inside_the_mask():
    # query 0: softmax over (dog, cat, cup, no-object) of logits ln(6, 1, 1, 2) -> 0.6 dog;
    # mask logits 2x2 [[4, -4], [4, -4]] at a quarter of an 8x8 input, bilinearly upsampled (half-pixel centres):
    # columns 0..7 read 4, 4, 3, 1, -1, -3, -4, -4; the mask is columns 0..3, box (0, 0, 4, 8), and its mean
    # sigmoid is (2 s(4) + s(3) + s(1)) / 4.
    names = ("dog", "cat", "cup")
    logits = torch.log(torch.tensor([[6.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 97.0]]))
    masks = torch.tensor([[[4.0, -4.0], [4.0, -4.0]], [[-5.0, -5.0], [-5.0, -5.0]]])
    out = instances(logits, masks, resized=(8, 8), original=(8, 8), class_names=names)
    sig = [1 / (1 + math.exp(-v)) for v in (4, 3, 1)]
    expected = 0.6 * (2 * sig[0] + sig[1] + sig[2]) / 4
    dog = max(out["dog"], key=lambda x: x.score)
    assert dog.score == pytest.approx(expected, rel=1e-5) and dog.box == (0.0, 0.0, 4.0, 8.0)
    assert dog.mask.shape == (8, 8) and dog.mask[:, :4].all() and not dog.mask[:, 4:].any()
    # query 1's mask is empty: its score is 0, so a min_score of 0.3 drops it
    assert all(x.score > 0.3 for x in instances(logits, masks, (8, 8), (8, 8), names, min_score=0.3)["dog"])
    assert sum(len(v) for v in out.values()) == 6  # top 100 of 2 queries x 3 classes: all six pairs


def test_instances_crop_the_padding_before_resizing_to_the_original_image():
    # 4x4 mask logits of a 16x16 padded input whose image is 12x16 (rows 12.. padding), shown at 6x8.
    # Rows of logits (6, 6, -6, -6) upsample to 16 rows reading 6 x6, 4.5, 1.5, -1.5, -4.5, -6 ...: rows 0..7
    # positive. Cropped to 12 rows and halved to 6, row 3 averages rows 6, 7 (+3) and row 4 rows 8, 9 (-3): the
    # mask is rows 0..3. Resizing the padded 16 rows to 6 directly would end it at row 2.
    logits = torch.log(torch.tensor([[9.0, 1.0]]))
    masks = torch.full((1, 4, 4), -6.0)
    masks[0, :2] = 6.0
    out = instances(logits, masks, resized=(12, 16), original=(6, 8), class_names=("dog",))["dog"][0]
    assert out.mask.shape == (6, 8) and out.box == (0.0, 0.0, 8.0, 4.0)


# ---------------------------------------------------------------------------------------------- scorer


def test_the_scorer_applies_geneval_rules_to_the_detections_and_writes_genevals_format(tmp_path, fake_models):
    det, clip = fake_models
    folder = make_folder(tmp_path / "f", [RED_DOG, TWO_CUPS, CAT_LEFT])
    summary = scorer_mod.score_folder(folder, tmp_path / "out", det, clip, "cpu", batch_size=4, progress=False)
    rows = read_rows(tmp_path / "out" / "results.jsonl")
    assert [(r["index"], r["sample"], r["correct"]) for r in rows] == [
        (0, 0, True), (0, 1, False), (1, 0, True), (1, 1, False), (2, 0, True), (2, 1, False)]
    assert [r["reason"] for r in rows if not r["correct"]] == [
        "expected red dog>=1, found 0 red; and 1 blue", "expected cup<3, found 3",
        "expected cat left of target, found right of target"]
    first = rows[0]
    assert set(first) >= {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert first["filename"] == str(folder / "00000" / "samples" / "0000.png")
    assert json.loads(first["metadata"]) == RED_DOG and first["tag"] == "colors"
    assert json.loads(first["details"]) == {"dog": [[2.0, 2.0, 12.0, 12.0, 0.8]]}
    assert json.loads(rows[3]["details"])["cup"][2][4] == 0.91  # the 0.9 cup is not kept under "counting"
    # GenEval's summary_scores.py: per tag the mean of `correct`, overall the mean over tags
    assert summary["tags"]["colors"]["accuracy"] == 0.5 and summary["overall"] == 0.5
    assert summary["official_detector"] is False and "another detector" in summary["detector"]
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "another detector" in md and "| **overall** (mean of 3 tags) | 6 | 3 | **50.0%** |" in md
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["overall"] == 0.5


def test_a_second_run_resumes_from_the_cache_and_a_torn_line_is_rescored(tmp_path, fake_models):
    det, clip = fake_models
    folder = make_folder(tmp_path / "f", [RED_DOG, TWO_CUPS])
    out = tmp_path / "out"
    scorer_mod.score_folder(folder, out, det, clip, "cpu", progress=False)
    assert FakeDetector.calls == 4
    first = (out / "results.jsonl").read_text()
    scorer_mod.score_folder(folder, out, det, clip, "cpu", progress=False)
    assert FakeDetector.calls == 4 and (out / "results.jsonl").read_text() == first
    cache = out / "cache.jsonl"
    lines = cache.read_text().splitlines()
    cache.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # the last image's line cut by a crash
    scorer_mod.score_folder(folder, out, det, clip, "cpu", progress=False)
    assert FakeDetector.calls == 5 and (out / "results.jsonl").read_text() == first
    Image.new("RGB", (32, 32), (0, 0, 90)).save(folder / "00001" / "samples" / "0001.png")  # a changed image
    scorer_mod.score_folder(folder, out, det, clip, "cpu", progress=False)
    assert FakeDetector.calls == 6


def test_results_made_with_another_detector_are_kept_unless_overwrite(tmp_path, fake_models):
    det, clip = fake_models
    folder = make_folder(tmp_path / "f", [RED_DOG])
    scorer_mod.score_folder(folder, tmp_path / "out", det, clip, "cpu", progress=False)
    other = save_tiny_mask2former(tmp_path / "other")
    with pytest.raises(UserError, match="other models or settings.*--overwrite"):
        scorer_mod.score_folder(folder, tmp_path / "out", other, clip, "cpu", progress=False)
    scorer_mod.score_folder(folder, tmp_path / "out", other, clip, "cpu", overwrite=True, progress=False)
    assert FakeDetector.calls == 4


def test_the_tiny_random_models_run_the_whole_scorer_end_to_end(tmp_path, models, gvu):
    det, clip = models
    folder = make_folder(tmp_path / "f", [RED_DOG, TWO_CUPS], images_per_prompt=1)
    rc, out, err = gvu("eval", folder, "--detector", det, "--clip", clip, "--device", "cpu", "--batch-size", "2")
    assert rc == 0, err
    assert "another detector" in out and "| **overall** (mean of 2 tags) |" in out
    rows = read_rows(folder / "geneval" / "results.jsonl")
    assert len(rows) == 2
    dogs = json.loads(rows[0]["details"])["dog"]  # the class head says "dog" for every query
    scores = [b[4] for b in dogs]
    assert 1 <= len(dogs) <= 12 and scores == sorted(scores, reverse=True) and min(scores) > 0.3
    assert all(0 <= b[0] < b[2] <= 32 and 0 <= b[1] < b[3] <= 32 for b in dogs)
    # CLIP (random) named the top dog's colour: right, or a reason in GenEval's words
    assert rows[0]["correct"] or rows[0]["reason"].startswith("expected red dog>=1, found 0 red; and 1 ")
    assert not rows[1]["correct"] and rows[1]["reason"] == "expected cup>=2, found 0"


# ------------------------------------------------------------------------------------------- bad input


def test_a_detector_directory_of_the_wrong_kind_is_refused_before_any_image(tmp_path, models, gvu):
    det, clip = models
    folder = make_folder(tmp_path / "f", [RED_DOG])
    rc, _, err = gvu("eval", folder, "--detector", clip, "--clip", clip)
    assert rc == 2 and "model_type is 'clip', not 'mask2former'" in err
    three = save_tiny_mask2former(tmp_path / "three", id2label={0: "dog", 1: "cat", 2: "kangaroo"})
    rc, _, err = gvu("eval", folder, "--detector", three, "--clip", clip)
    assert rc == 2 and "its 3 classes are not GenEval's 80 COCO classes" in err and "'kangaroo'" in err
    rc, _, err = gvu("eval", folder, "--detector", det, "--clip", det)
    assert rc == 2 and "not 'clip'" in err
    rc, _, err = gvu("eval", folder, "--detector", tmp_path / "nowhere", "--clip", clip)
    assert rc == 2 and "no config.json" in err
    assert not (folder / "geneval").exists()


def test_coco_names_of_the_facebook_checkpoints_map_onto_genevals(tmp_path):
    from gvu.eval.geneval.detector import inspect_detector_dir

    coco = {i: {"computer mouse": "mouse", "tv remote": "remote", "computer keyboard": "keyboard"}.get(n, n)
            for i, n in enumerate(NAMES)}
    cfg = {"model_type": "mask2former", "id2label": {str(k): v for k, v in coco.items()},
           "_name_or_path": "facebook/mask2former-swin-small-coco-instance"}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    info = inspect_detector_dir(tmp_path, gio.COCO_CLASSES)
    assert info.class_names == NAMES and not info.official and "another detector" in info.source
    cfg["gvu_source"] = {"checkpoint": "m.pth", "sha256": "743b7d99" + "0" * 56}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert inspect_detector_dir(tmp_path, gio.COCO_CLASSES).official


def test_images_of_mixed_sizes_are_refused_naming_both(tmp_path, models, gvu):
    det, clip = models
    folder = make_folder(tmp_path / "f", [RED_DOG, TWO_CUPS])
    odd = folder / "00001" / "samples" / "0001.png"
    Image.new("RGB", (48, 32)).save(odd)
    rc, _, err = gvu("eval", folder, "--detector", det, "--clip", clip)
    assert rc == 2 and f"{odd}: image is 48x32, but" in err and "32x32" in err
    assert not (folder / "geneval").exists()


def test_a_folder_that_is_not_a_geneval_layout_is_refused(tmp_path, models, gvu):
    det, clip = models
    (tmp_path / "empty").mkdir()
    rc, _, err = gvu("eval", tmp_path / "empty", "--scorer", "geneval", "--detector", det, "--clip", clip)
    assert rc == 2 and "holds no prompt folders" in err
    (tmp_path / "f" / "00000").mkdir(parents=True)
    rc, _, err = gvu("eval", tmp_path / "f", "--scorer", "geneval", "--detector", det, "--clip", clip)
    assert rc == 2 and "no metadata.jsonl" in err
    folder = make_folder(tmp_path / "g", [{**RED_DOG, "include": [{"class": "unicorn", "count": 1}]}])
    rc, _, err = gvu("eval", folder, "--detector", det, "--clip", clip)
    assert rc == 2 and "'unicorn' is not one of GenEval's 80 COCO classes" in err


def test_an_output_inside_a_prompt_folder_or_the_detector_is_refused_and_nothing_changes(tmp_path, models, gvu):
    det, clip = models
    folder = make_folder(tmp_path / "f", [RED_DOG])
    before = sorted(str(p) for p in folder.rglob("*"))
    for out in (folder / "00000" / "scores", det / "scores"):
        rc, _, err = gvu("eval", folder, "--detector", det, "--clip", clip, "--out", out, "--overwrite")
        assert rc == 2 and "--out" in err and "Traceback" not in err
        assert not out.exists()
    assert sorted(str(p) for p in folder.rglob("*")) == before


def test_coco_prompts_default_to_the_geneval_scorer_which_needs_its_models(tmp_path, gvu):
    folder = make_folder(tmp_path / "f", [RED_DOG])
    rc, _, err = gvu("eval", folder)
    assert rc == 2 and "--scorer geneval needs --detector and --clip" in err


def test_images_are_read_with_their_exif_orientation_applied(tmp_path):
    from gvu.eval.geneval.detector import load_image

    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    im.save(tmp_path / "r.png", exif=exif)
    assert load_image(tmp_path / "r.png").size == (20, 40)


def test_the_class_names_are_genevals_object_names_in_order(benchmarks_dir):
    names = (benchmarks_dir / "geneval" / "object_names.txt").read_text().split("\n")
    assert tuple(n.strip() for n in names if n.strip()) == NAMES
