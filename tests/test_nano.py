"""nano-Janus: tokenizer, the smoke pretraining preset, offline save/load, decoding, and (when shipped) the
trained model's understanding on a handful of scenes."""

import json
import os
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer, JanusForConditionalGeneration

from gvu.config import SamplingConfig
from gvu.models import nano
from gvu.models.janus import JanusBackend
from gvu.models.pretrain import pretrain

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "nano-janus"


def test_tokenizer_round_trips_world_text_and_keeps_janus_special_tokens():
    tok = nano.build_tokenizer(nano.SPECS["smoke"], nano.corpus(200))
    for text in ["a photo of a red circle left of a square", "A photo of three purple hearts on the above",
                 "Describe the image in detail.", "How many stars are there? two"]:
        ids = tok(text).input_ids
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text
    for special in (nano.IMAGE, nano.BOI, nano.EOI, nano.USER, nano.ASSISTANT, nano.PAD):
        assert len(tok(special, add_special_tokens=False).input_ids) == 1
    assert tok.image_token == nano.IMAGE and tok.boi_token == nano.BOI


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain")
    return pretrain("smoke", str(out), threads=1)


def test_smoke_pretraining_writes_a_model_that_loads_offline(smoke_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = set(os.listdir(smoke_model))
    assert {"config.json", "model.safetensors", "tokenizer.json", "gvu_backend.json"} <= files
    model = JanusForConditionalGeneration.from_pretrained(smoke_model)
    proc = AutoProcessor.from_pretrained(smoke_model)
    tok = AutoTokenizer.from_pretrained(smoke_model)
    assert proc.num_image_tokens == model.config.vision_config.num_image_tokens == 64
    assert tok.convert_tokens_to_ids(nano.IMAGE) == model.config.image_token_id


def test_pretraining_resumes_instead_of_starting_over(smoke_model):
    out = os.path.dirname(smoke_model)
    before = os.path.getmtime(os.path.join(out, "stage2.pt"))
    pretrain("smoke", out, threads=2)  # both stages are complete: nothing retrains, under another thread count
    pretrain("smoke", out, threads=1)  # too (where a run runs is not its recipe); torch is left at 1 thread
    assert os.path.getmtime(os.path.join(out, "stage2.pt")) == before
    with pytest.raises(ValueError, match="different config"):
        pretrain("smoke", out, threads=1, lm_steps=31)


def test_a_run_begun_before_a_speed_only_field_existed_still_resumes(smoke_model):
    out = os.path.dirname(smoke_model)
    meta = os.path.join(out, "pretrain_config.json")
    with open(meta) as f:
        original = f.read()
    old = json.loads(original)
    del old["vq_norm_fp32"]  # as a folder written before the field existed
    try:
        with open(meta, "w") as f:
            json.dump(old, f)
        before = os.path.getmtime(os.path.join(out, "stage2.pt"))
        pretrain("smoke", out, threads=1)  # the smoke preset sets vq_norm_fp32=True: still the same run
        assert os.path.getmtime(os.path.join(out, "stage2.pt")) == before
        with pytest.raises(ValueError, match="different config"):  # a field that changes the recipe still refuses
            pretrain("smoke", out, threads=1, lm_steps=31)
    finally:
        with open(meta, "w") as f:
            f.write(original)


def test_vq_stages_compute_group_norms_in_fp32_only_when_the_recipe_says_so(tmp_path, monkeypatch):
    from dataclasses import replace

    import gvu.models.pretrain as pt
    from gvu.models.pretrain import kernels

    swapped, real = [], kernels.fp32_group_norms
    monkeypatch.setattr(kernels, "fp32_group_norms", lambda m: swapped.append(type(m).__name__) or real(m))
    for flag in (False, True):
        cfg = replace(pt.PRESETS["smoke"], vq_norm_fp32=flag, vq_steps=1, dec_steps=1, threads=1)
        out = str(tmp_path / str(flag))
        os.makedirs(out)
        _, _, config = pt.stage0(cfg, out)
        pt.stage_decoder(cfg, out, config, pt.stage1(cfg, out, config))
    assert swapped == ["JanusVQVAE", "JanusVQVAE"]  # stages 1 and 1c, and only with the flag


def test_object_crops_hold_the_drawn_object_and_stay_inside_the_image():
    from gvu.models.pretrain import object_crops
    from gvu.world.scene import Obj, Scene

    # one object near the left edge: its crop centre lies within 8 px (32/4) of (10, 50), so the 32x32 crop starts
    # at column round(10 +- 8 - 16) clamped to 0 -> 0..2 and at row round(50 +- 8 - 16) clamped to 32 -> 26..32
    scene = Scene((Obj("circle", "red", "small", 10.0, 50.0),))
    pixels = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64).repeat(40, 3, 1, 1)
    crops = object_crops(pixels, [scene] * 40, 32, random.Random(0))
    assert crops.shape == (40, 3, 32, 32)
    tops, lefts = (crops[:, 0, 0, 0] // 64).long(), (crops[:, 0, 0, 0] % 64).long()
    assert set(lefts.tolist()) <= {0, 1, 2} and set(tops.tolist()) <= set(range(26, 33))
    assert len(set(tops.tolist())) > 3  # the jitter moves crops about
    for c, top, left in zip(crops, tops, lefts):  # a plain slice of the image, not resampled
        assert torch.equal(c, pixels[0, :, top:top + 32, left:left + 32])
    with pytest.raises(ValueError, match="does not fit"):
        object_crops(pixels, [scene] * 40, 72, random.Random(0))


def test_stage1_trains_on_crops_with_every_nth_step_on_whole_images(tmp_path, monkeypatch):
    from dataclasses import replace

    import gvu.models.pretrain as pt
    from gvu.models.pretrain import image_stages

    shapes, real = [], image_stages.vq_loss
    monkeypatch.setattr(image_stages, "vq_loss", lambda vq, px, **kw: shapes.append(tuple(px.shape)) or real(vq, px, **kw))
    cfg = replace(pt.PRESETS["smoke"], vq_steps=6, vq_crop=16, vq_crop_batch=3, vq_full_every=3, threads=1)
    _, _, config = pt.stage0(cfg, str(tmp_path))
    pt.stage1(cfg, str(tmp_path), config)
    crop, full = (3, 3, 16, 16), (cfg.vq_batch, 3, 64, 64)
    assert shapes == [crop, crop, full, crop, crop, full]


def test_a_crop_the_vq_cannot_train_on_is_refused_before_any_work(tmp_path):
    for bad in (20, 4, 72):
        out = tmp_path / f"crop{bad}"
        with pytest.raises(ValueError, match=f"vq_crop={bad}: a crop side must be a multiple of 8"):
            pretrain("smoke", str(out), vq_crop=bad)
        assert not out.exists()  # nothing made, nothing to clean up
    with pytest.raises(ValueError, match="at least 1 crop"):
        pretrain("smoke", str(tmp_path / "batch0"), vq_crop=16, vq_crop_batch=0)
    assert not (tmp_path / "batch0").exists()


def test_stage3_from_a_saved_model_trains_it_further_and_refuses_bad_sources(smoke_model, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "s3"
    path = pretrain("smoke", str(out), threads=1, from_model=smoke_model, s3_steps=3, dec_steps=2)
    # stages 0-2 came from the source; 1c and 3 ran
    assert sorted(p for p in os.listdir(out) if p.endswith(".pt")) == ["decoder.pt", "stage3.pt"]
    before, after = load_file(os.path.join(smoke_model, "model.safetensors")), load_file(os.path.join(path, "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    lm = [k for k in before if "language_model" in k]
    assert lm and len(changed & set(lm)) > len(lm) // 2
    vq = [k for k in before if "vqmodel" in k]
    # stage 1c trains the VQ decoder alone: encoder and codebook (so every image's tokens) stay as they were
    assert {k for k in vq if k in changed} == {k for k in vq if ".decoder." in k or "post_quant_conv" in k}
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    assert [r["step"] for r in records if r["stage"] == 3] == [3]
    assert [r["step"] for r in records if r["stage"] == "1c"] == [2]
    with pytest.raises(ValueError, match="not a saved nano-Janus directory"):
        pretrain("smoke", str(tmp_path / "bad"), threads=1, from_model=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no stage 1c or 3"):
        pretrain("smoke", str(tmp_path / "bad2"), threads=1, from_model=smoke_model, s3_steps=0, dec_steps=0)


def test_position_probe_trains_in_stage3_logs_and_resumes(smoke_model, tmp_path):
    out = tmp_path / "pos"
    pretrain("smoke", str(out), threads=1, from_model=smoke_model, s3_steps=4, dec_steps=0, pos_weight=1.0, save_every=2)
    records = [r for r in map(json.loads, open(out / "log.jsonl")) if r["stage"] == 3]
    assert records and all(0 <= r["aux/pos_acc"] <= 1 and r["loss/pos"] > 0 for r in records)
    state = torch.load(out / "stage3.pt", weights_only=False)
    assert state["step"] == 4 and set(state["pos_probe"]) == {"heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias"}
    state["step"] = 2  # as if stopped at the step-2 save: resuming must load the probe and run steps 3-4 only
    torch.save(state, out / "stage3.pt")
    pretrain("smoke", str(out), threads=1, from_model=smoke_model, s3_steps=4, dec_steps=0, pos_weight=1.0, save_every=2)
    assert torch.load(out / "stage3.pt", weights_only=False)["step"] == 4


def test_stage1b_with_the_position_probe_logs_its_accuracy(tmp_path):
    from dataclasses import replace

    from gvu.models.pretrain import PRESETS, stage0, stage_vision

    cfg = replace(PRESETS["smoke"], pos_weight=1.0, vis_steps=2, threads=1)
    _, _, config = stage0(cfg, str(tmp_path))
    state = stage_vision(cfg, str(tmp_path), config)
    last = [json.loads(line) for line in open(tmp_path / "log.jsonl")][-1]
    assert last["stage"] == "1b" and last["step"] == 2 and 0 <= last["vision/pos_acc"] <= 1
    assert set(state) == {"vision", "probe"}  # the position heads are not part of what stage 2 receives


def test_the_relation_probe_trains_in_stages_1b_and_2_and_resumes(tmp_path):
    out = tmp_path / "rel"
    short = dict(threads=1, rel_weight=1.0, vq_steps=2, dec_steps=0, vis_steps=4, lm_steps=4, s3_steps=0, save_every=2)
    pretrain("smoke", str(out), **short)
    records = [json.loads(line) for line in open(out / "log.jsonl")]
    vision = [r for r in records if r["stage"] == "1b"]
    lm = [r for r in records if r["stage"] == 2]
    assert vision and all(0 <= r["vision/rel_acc"] <= 1 for r in vision if r["vision/rel_acc"] == r["vision/rel_acc"])
    assert lm and all(r["loss/rel"] > 0 for r in lm)
    vis = torch.load(out / "vision.pt", weights_only=False)["model"]
    state = torch.load(out / "stage2.pt", weights_only=False)
    assert state["step"] == 4 and set(state["rel_probe"]) == {"head.weight", "head.bias"}
    assert not torch.equal(state["rel_probe"]["head.weight"], vis["rel.head.weight"])  # stage 2 trained stage 1b's head
    state["step"] = 2  # as if stopped at the step-2 save: resuming loads the head and runs steps 3-4 only
    torch.save(state, out / "stage2.pt")
    pretrain("smoke", str(out), **short)
    assert torch.load(out / "stage2.pt", weights_only=False)["step"] == 4


def test_generated_tokens_decode_to_pixels_of_the_right_shape_and_range(smoke_model):
    b = JanusBackend.from_pretrained(smoke_model)
    tokens = b.sample_image_tokens(["a photo of a red circle", "a photo of two stars"], SamplingConfig(seed=0))
    assert tokens.shape == (2, 64) and tokens.min() >= 0 and tokens.max() < b.image_vocab_size
    px = b.decode_images(tokens)
    assert px.shape == (2, 3, 64, 64) and px.min() >= -1 and px.max() <= 1 and px.std() > 0


def _true_vs_edited(kind: str, n: int = 12) -> int:
    """On n eval-split scenes: how often log p(true prompt | image) beats a one-`kind`-edit of it."""
    from gvu.world.perturb import perturb
    from gvu.world.prompts import make_suite
    from gvu.world.rules import judge_scene
    from gvu.world.sampler import sample_scene
    from gvu.world.scene import render

    b = JanusBackend.from_pretrained(str(SHIPPED))
    rng = random.Random(3)
    wins = tried = 0
    for m in make_suite("geneval", "eval", seed=0):
        scene = sample_scene(m, rng)
        wrong = perturb(m, kind, rng)
        if wrong is None or judge_scene(wrong, list(scene.objects), scene.image_size).correct:
            continue
        px = torch.from_numpy(np.asarray(render(scene), dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        tl = b.text_logprobs(px.repeat(2, 1, 1, 1), "Describe the image in detail.", [m["prompt"], wrong["prompt"]])
        total = (tl.logprobs * tl.mask).sum(1)
        wins += bool(total[0] > total[1])
        tried += 1
        if tried == n:
            return wins
    raise AssertionError("not enough prompts with an edit of that kind")


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped nano-Janus (models/nano-janus) is not in this checkout")
def test_stage3_reconstructions_replace_renderings_only_where_the_evaluator_still_sees_the_scene():
    from gvu.models.pretrain import reconstruct_checked, to_pixels, train_scene
    from gvu.world.scene import render

    vq = JanusBackend.from_pretrained(str(SHIPPED)).model.model.vqmodel
    rng = random.Random(11)
    scenes = [train_scene(rng)[1] for _ in range(6)]
    px = to_pixels([render(sc) for sc in scenes])
    truth = [sorted((o.shape, o.color) for o in sc.objects) for sc in scenes]
    wrong = [sorted(t + [("circle", "red")]) for t in truth]  # one object more than the picture shows
    objects = truth[:3] + wrong[3:]
    out, used = reconstruct_checked(vq, px.clone(), objects)
    assert torch.equal(out[3:], px[3:])  # a claimed extra object is never seen: renderings kept
    replaced = [i for i in range(3) if not torch.equal(out[i], px[i])]
    assert used == len(replaced) >= 2  # the shipped VQ keeps most simple scenes readable
    for i in replaced:  # 8-bit pixels, as a generated image is once saved
        levels = (out[i] + 1) * 127.5
        assert torch.allclose(levels, levels.round(), atol=1e-4)
    # close to the renderings on the whole (one of these has a colour cast over its background: mean error 0.10)
    assert (out[replaced] - px[replaced]).abs().mean() < 0.08


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped nano-Janus (models/nano-janus) is not in this checkout")
def test_shipped_model_prefers_the_true_caption_to_a_wrong_colour():
    wins = _true_vs_edited("color")
    assert wins >= 11, f"the true caption beat a wrong-colour caption only {wins} of 12 times"


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped nano-Janus (models/nano-janus) is not in this checkout")
def test_shipped_model_prefers_the_true_caption_to_a_wrong_shape():
    wins = _true_vs_edited("shape")
    assert wins >= 11, f"the true caption beat a wrong-shape caption only {wins} of 12 times"


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped nano-Janus (models/nano-janus) is not in this checkout")
def test_shipped_model_prefers_the_true_caption_to_a_mirrored_relation():
    # v3-v6 failed this (a strict xfail until v7); v7 passes on these 12 fixed scenes, though over the benchmark's
    # eval scenes it catches a mirrored relation only 65-66% of the time (benchmarks/nano_model_eval.py)
    assert _true_vs_edited("relation") >= 11


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped nano-Janus (models/nano-janus) is not in this checkout")
def test_gvu_score_reports_rewards_tokens_and_weights(tmp_path, capsys):
    from PIL import Image

    from gvu.cli import main

    img = np.full((64, 64, 3), 128, dtype=np.uint8)
    img[20:40, 20:40] = (220, 30, 30)  # a red square on the world's grey background
    Image.fromarray(img).save(tmp_path / "x.png")
    rows = {}
    for weights in ("uniform", "surprisal"):
        out = tmp_path / f"{weights}.jsonl"
        assert main(["score", "--model", str(SHIPPED), "--image", str(tmp_path / "x.png"), "--prompt",
                     "a photo of a red square", "--token-weights", weights, "--out", str(out)]) == 0
        rows[weights] = json.loads(out.read_text())
    lp = np.array([t[1] for t in rows["uniform"]["tokens"]])
    assert [t[0] for t in rows["uniform"]["tokens"]] == [" a", " photo", " of", " a", " red", " square"]
    assert rows["uniform"]["reward"] == pytest.approx(np.exp(lp.mean()), rel=1e-2)  # log-probs are rounded to 1e-3
    w = np.array(rows["surprisal"]["token_weights"])
    assert len(w) == len(lp) and (w > 0).all()
    assert rows["surprisal"]["reward"] == pytest.approx(np.exp((w * lp).sum() / w.sum()), rel=1e-2)
    # bad combination: refused before the model is even looked for
    capsys.readouterr()
    assert main(["score", "--model", "no/such/model", "--image", "x.png", "--prompt", "a", "--reduction", "min",
                 "--token-weights", "surprisal"]) == 2
    assert "needs reduction=geometric_mean" in capsys.readouterr().err


@pytest.mark.skipif(not SHIPPED.exists(), reason="the shipped nano-Janus (models/nano-janus) is not in this checkout")
def test_gvu_score_refuses_bad_input_before_loading_the_model_and_keeps_existing_files(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from gvu.cli import main
    from gvu.models.janus import JanusBackend

    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.full((48, 48, 3), 128, dtype=np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "notamodel").mkdir()
    loads = []
    real = JanusBackend.from_pretrained
    monkeypatch.setattr(JanusBackend, "from_pretrained", staticmethod(lambda *a, **k: loads.append(1) or real(*a, **k)))
    img = ["--image", str(tmp_path / "ok.png")]
    for args, words in [
        ([*img, "--prompt", "a photo of a red square", "--out", str(tmp_path / "notes.txt")], "already exists; pass --overwrite"),
        ([*img, "--prompt", "a cat", "--model", str(tmp_path / "notamodel")], "has no config.json"),
        (["--image", str(tmp_path / "small.png"), "--prompt", "a cat"], "image is 48x48, but model .* reads 64x64"),
        (["--image", str(tmp_path / "missing.png"), "--prompt", "a cat"], "unreadable image"),
        ([str(tmp_path), "--prompt", "a cat"], "--prompt goes with --image"),
    ]:
        args = ["score", *args] + ([] if "--model" in args else ["--model", str(SHIPPED)])
        assert main(args) == 2, args
        assert re.search(words, capsys.readouterr().err), (args, words)
    assert loads == []  # every refusal came before the model loaded
    assert (tmp_path / "notes.txt").read_text() == "mine"
    # prompts the model cannot score: refused after the load, before any scoring
    for prompt, words in [("", "cannot score an empty text"), ("a red square " * 80, "positions after the image and query")]:
        assert main(["score", *img, "--prompt", prompt, "--model", str(SHIPPED)]) == 2
        assert re.search(words, capsys.readouterr().err), words


def test_stage2_variant_takes_its_vq_from_a_saved_model(smoke_model, tmp_path, monkeypatch):
    """experiments.stage2_variants --vq-from: stage 2 runs on the saved model's VQ, copied bit for bit."""
    import sys

    from safetensors.torch import load_file

    from experiments import stage2_variants as sv
    base = os.path.dirname(smoke_model)
    src = load_file(os.path.join(smoke_model, "model.safetensors"))
    vq = [k for k in src if k.startswith("model.vqmodel.")]
    base_vq = torch.load(os.path.join(base, "stage1.pt"), weights_only=False)["model"]
    # the smoke model's decoder went through stage 1c, so its VQ differs from --base's stage 1: the check can fail
    assert any(not torch.equal(src[k], base_vq[k[len("model.vqmodel."):]]) for k in vq)
    out = tmp_path / "v"
    sv.train_variant(base, str(out), "smoke", {"lm_steps": 2, "dec_steps": 0, "s3_steps": 0}, "cpu", vq_from=smoke_model)
    new = load_file(out / "model" / "model.safetensors")
    assert vq and all(torch.equal(src[k], new[k]) for k in vq)
    assert [json.loads(line)["step"] for line in open(out / "log.jsonl") if '"stage": 2' in line] == [2]
    with pytest.raises(SystemExit, match="VQ from .* not --base"):  # a rerun into the same folder without --vq-from
        sv.train_variant(base, str(out), "smoke", {"lm_steps": 2, "dec_steps": 0, "s3_steps": 0}, "cpu")
    with pytest.raises(SystemExit, match="has no config.json, tokenizer, vision.pt"):
        sv.check_inputs(str(tmp_path), smoke_model)
    with pytest.raises(SystemExit, match="has no model.safetensors"):
        sv.check_inputs(base, str(tmp_path))
    smoke_cfg = json.load(open(os.path.join(smoke_model, "config.json")))["vq_config"]
    bigger = tmp_path / "bigger"
    bigger.mkdir()
    (bigger / "model.safetensors").write_bytes(b"")
    (bigger / "config.json").write_text(json.dumps({"vq_config": {**smoke_cfg, "base_channels": 2 * smoke_cfg["base_channels"]}}))
    with pytest.raises(SystemExit, match="does not fit"):  # refused from the configs, before any weights are read
        sv.check_inputs(base, str(bigger))
    # main() hands --vq-from to each variant's process
    launched = []

    class Failed:
        def __init__(self, cmd, **kw):
            launched.append(cmd)

        def wait(self):
            return 1

    monkeypatch.setattr(sv.subprocess, "Popen", Failed)
    monkeypatch.setattr(sys, "argv", ["stage2_variants.py", "--base", base, "--vq-from", smoke_model, "--out",
                                      str(tmp_path / "m"), "--variant", "a", "{}"])
    with pytest.raises(SystemExit, match="variants failed"):
        sv.main()
    assert len(launched) == 1 and launched[0][launched[0].index("--vq-from") + 1] == smoke_model


def test_vq_from_puts_a_saved_models_vq_under_a_deeper_language_model(smoke_model, tmp_path, monkeypatch, gvu):
    """--vq-from: stage 1 is the saved model's VQ bit for bit (with dec_steps=0 the decoder too), and the language
    model is the spec's, here one layer deeper than the source's."""
    from safetensors.torch import load_file

    deeper = replace(nano.SPECS["smoke"], text_layers=nano.SPECS["smoke"].text_layers + 1)
    monkeypatch.setitem(nano.SPECS, "smoke-deep", deeper)
    out = tmp_path / "deep"
    path = pretrain("smoke", str(out), threads=1, spec="smoke-deep", vq_from=smoke_model, dec_steps=0, s3_steps=0,
                    lm_steps=2)
    src, new = load_file(os.path.join(smoke_model, "model.safetensors")), load_file(os.path.join(path, "model.safetensors"))
    vq = [k for k in src if k.startswith("model.vqmodel.")]
    assert vq and all(torch.equal(src[k], new[k]) for k in vq)
    layers = {int(m.group(1)) for k in new for m in [re.search(r"language_model\.layers\.(\d+)\.", k)] if m}
    assert layers == set(range(deeper.text_layers))
    assert json.load(open(out / "pretrain_config.json"))["vq_from"] == smoke_model
    assert torch.load(out / "stage1.pt", weights_only=False)["vq_from"] == os.path.abspath(smoke_model)
    # bad sources are refused before any folder is made
    with pytest.raises(ValueError, match="not a saved model directory"):
        pretrain("smoke", str(tmp_path / "bad"), vq_from=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="give one"):
        pretrain("smoke", str(tmp_path / "bad"), vq_from=smoke_model, from_model=smoke_model)
    with pytest.raises(ValueError, match="not spec 'nano'.s.*num_embeddings"):  # the smoke VQ has 64 codes, nano 512
        pretrain("smoke", str(tmp_path / "bad"), spec="nano", vq_from=smoke_model)
    assert not (tmp_path / "bad").exists()
    rc, _, err = gvu("pretrain", "--preset", "smoke", "--out", tmp_path / "bad", "--vq-from", tmp_path / "nowhere")
    assert rc != 0 and "--vq-from" in err and not (tmp_path / "bad").exists()


def test_lm_stages_train_with_eager_attention_on_the_cpu_and_give_the_model_back_as_it_was(smoke_model, tmp_path):
    from dataclasses import replace

    from gvu.models.pretrain import PRESETS, stage3

    model = JanusForConditionalGeneration.from_pretrained(smoke_model)
    assert model.config._attn_implementation == "sdpa"
    seen = []
    model.model.language_model.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    cfg = replace(PRESETS["smoke"], s3_steps=1, threads=1)
    stage3(cfg, str(tmp_path), nano.SPECS["smoke"], AutoTokenizer.from_pretrained(smoke_model), model)
    assert os.path.exists(tmp_path / "stage3.pt")
    assert seen and set(seen) == {"eager"}
    assert model.config._attn_implementation == model.config.text_config._attn_implementation == "sdpa"


def test_pretrain_set_overrides_are_typed_and_bad_ones_fail_before_any_work(tmp_path, monkeypatch, capsys):
    from gvu import cli
    from gvu.models import pretrain as pt

    # read as `gvu train --set` reads its fields: an int is taken for a float, 1/0 and yes/no for a bool
    assert pt.parse_overrides(["vq_steps=4000", "vq_lr=1", "bf16=no", "device=cuda", "spec=nano"]) == {
        "vq_steps": 4000, "vq_lr": 1.0, "bf16": False, "device": "cuda", "spec": "nano"}
    assert pt.parse_overrides(["vq_channel_multiplier=[1, 2]"], nano.NanoSpec, "--spec") == {"vq_channel_multiplier": (1, 2)}
    for bad, words in (("vq_steps=4e3", "expected int, got 4000.0"), ("vq_lr=fast", "expected float, got 'fast'"),
                       ("bf16=maybe", "expected true or false"), ("vq_stepz=3", "'vq_stepz' is not a PretrainConfig field"),
                       ("vq_steps", "no value")):
        with pytest.raises(ValueError, match=words):
            pt.parse_overrides([bad])
    with pytest.raises(ValueError, match="a list of integers"):
        pt.parse_overrides(["vq_channel_multiplier=2"], nano.NanoSpec, "--spec")
    # the command runs the preset with the overrides ...
    seen = {}
    with monkeypatch.context() as m:
        m.setattr(pt, "run_stages", lambda cfg, out: seen.update(cfg=cfg, out=out) or out + "/model")
        assert cli.main(["pretrain", "--preset", "smoke", "--out", str(tmp_path / "a"), "--set", "lm_steps=31",
                         "--threads", "1"]) == 0
    assert seen == {"cfg": replace(pt.PRESETS["smoke"], lm_steps=31, threads=1), "out": str(tmp_path / "a")}
    # ... and a bad one stops the real command before any work: no run folder
    assert cli.main(["pretrain", "--preset", "smoke", "--out", str(tmp_path / "b"), "--set", "lm_steps=many"]) == 2
    assert "expected int" in capsys.readouterr().err and not (tmp_path / "b").exists()
