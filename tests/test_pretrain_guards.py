"""`gvu pretrain`'s guards: bad input refused before any folder or work, a user's model never replaced, one writer
per run folder, crash leftovers (cut log lines) tolerated, and stage 1 resumed exactly between two code restarts."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

import gvu.models.pretrain as pt
from gvu.models.pretrain import RunFolder, pretrain, resolve
from gvu.models.vq_train import foreground_weight
from gvu.world.vocab import BACKGROUND

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "nano-janus"


@pytest.mark.parametrize("field,value,words", [
    ("spec", "nanoo", "spec='nanoo': not a model size"),
    ("save_every", 0, "save_every=0: must be at least 1"),
    ("vq_restart_every", 0, "vq_restart_every=0: must be at least 1"),
    ("vq_batch", 0, "vq_batch=0: must be at least 1"),
    ("lm_steps", -5, "lm_steps=-5: must be at least 0"),
    ("threads", 0, "threads=0: must be at least 1"),
    ("lm_lr", 0.0, "lm_lr=0.0: a learning rate must be above 0"),
    ("prompt_dropout", 1.5, "prompt_dropout=1.5: must be between 0.0 and 1.0"),
    ("und_extra", float("nan"), "und_extra=nan"),
    ("dec_small", -0.1, "dec_small=-0.1: must be between 0.0 and 1.0"),
    ("device", "gpu", "device='gpu': give cpu or cuda"),
    ("from_model", "models/nano-janu", "is not a saved nano-Janus directory"),
])
def test_a_bad_recipe_is_refused_before_any_folder_is_made(tmp_path, field, value, words):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        pretrain("smoke", str(out), **{field: value})
    assert not out.exists()


def test_the_cli_refuses_bad_input_with_a_message_and_no_folder(tmp_path):
    out = tmp_path / "run"
    for args, words in ((["--threads", "0"], "threads=0: must be at least 1"),
                        (["--set", "spec=nanoo"], "not a model size"),
                        (["--from-model", str(tmp_path / "nowhere")], "not a saved nano-Janus directory")):
        r = subprocess.run([sys.executable, "-m", "gvu.cli", "pretrain", "--preset", "smoke", "--out", str(out), *args],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "gvu: error:" in r.stderr and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not out.exists()


def test_a_users_model_in_the_run_folder_is_never_replaced(tmp_path):
    work = tmp_path / "w"
    shutil.copytree(SHIPPED, work / "model")  # e.g. the shipped model copied there to train further
    before = sorted(os.listdir(work / "model"))
    with pytest.raises(ValueError, match="lies in --out .* model folder"):
        pretrain("nano", str(work), from_model=str(work / "model"))
    with pytest.raises(ValueError, match="holds a model/ folder but no pretraining run"):
        pretrain("nano", str(work), from_model=str(SHIPPED))
    assert sorted(os.listdir(work / "model")) == before and not (work / "pretrain_config.json").exists()


def test_a_saved_model_or_a_folder_of_other_files_is_not_taken_for_a_run(tmp_path):
    model = tmp_path / "model_copy"
    shutil.copytree(SHIPPED, model)  # it holds its recipe's pretrain_config.json: it must not look like a resume
    before = sorted(os.listdir(model))
    with pytest.raises(ValueError, match="is a saved model .*model.safetensors"):
        RunFolder(resolve("nano"), str(model))
    assert sorted(os.listdir(model)) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and is not a pretraining run .*notes.txt"):
        RunFolder(resolve("smoke"), str(other))
    assert os.listdir(other) == ["notes.txt"]
    seeded = tmp_path / "seeded"  # stage checkpoints placed there beforehand are still taken up
    seeded.mkdir()
    (seeded / "stage1.pt").write_bytes(b"")
    RunFolder(resolve("smoke"), str(seeded)).close()


def test_one_writer_at_a_time_per_run_folder(tmp_path):
    cfg = resolve("smoke", threads=1)
    first = RunFolder(cfg, str(tmp_path / "run"))
    try:
        with pytest.raises(ValueError, match="another `gvu pretrain` is writing into"):
            RunFolder(cfg, str(tmp_path / "run"))
    finally:
        first.close()
    RunFolder(cfg, str(tmp_path / "run")).close()  # free again once the first has ended
    assert json.loads((tmp_path / "run" / "pretrain_config.json").read_text())["lm_steps"] == cfg.lm_steps


def test_where_and_how_a_run_runs_is_not_its_recipe(tmp_path):
    RunFolder(resolve("smoke", threads=1), str(tmp_path / "run")).close()
    # another thread count, checkpoint interval or number of data workers resumes the same run
    RunFolder(resolve("smoke", threads=2, save_every=7, data_workers=2), str(tmp_path / "run")).close()
    with pytest.raises(ValueError, match="different config"):
        RunFolder(resolve("smoke", threads=1, vq_steps=31), str(tmp_path / "run"))


def test_log_lines_cut_short_by_a_crash_are_dropped_on_resume(tmp_path):
    from gvu.run_io import truncate_jsonl

    lines = [json.dumps({"stage": 1, "step": s}) + "\n" for s in (20, 40, 60)]
    (tmp_path / "log.jsonl").write_text("".join(lines) + '{"stage": 1, "st')
    pt.trim_log(str(tmp_path), 1, 40)
    assert (tmp_path / "log.jsonl").read_text() == "".join(lines[:2])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert truncate_jsonl(str(tmp_path / "metrics.jsonl"), 5) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_foreground_weight_reads_the_world_background_not_the_corner():
    bg = torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
    img = bg.repeat(1, 4, 4)
    img[:, :2, :2] = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)  # an object over the top-left corner: 4 of 16 pixels
    w = foreground_weight(img[None], fg_weight=10.0)[0, 0]
    # weights 10 on the 4 object pixels and 1 on the 12 others, divided by their mean (40 + 12) / 16 = 3.25
    assert torch.allclose(w[:2, :2], torch.full((2, 2), 10 / 3.25))
    assert torch.allclose(w[2:, :], torch.full((2, 4), 1 / 3.25)) and torch.allclose(w[:2, 2:], torch.full((2, 2), 1 / 3.25))


def test_stage1_resumed_between_two_code_restarts_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    # restarts every 4 steps, saves every 3: a crash after the step-3 save resumes inside a restart window, whose
    # code-use counts (steps 1-3) must come back from the checkpoint, or codes used only then count as dead at step 4
    cfg = replace(pt.PRESETS["smoke"], vq_steps=8, vq_restart_every=4, save_every=3, threads=1)
    straight = tmp_path / "straight"
    os.makedirs(straight)
    _, _, config = pt.stage0(cfg, str(straight))
    want = pt.stage1(cfg, str(straight), config)

    crashed = tmp_path / "crashed"
    os.makedirs(crashed)
    pt.stage0(cfg, str(crashed))
    real, saves = pt.atomic_save, []

    def crash_on_second_save(obj, path):
        if saves:
            raise KeyboardInterrupt("stopped after step 6, before its save")
        saves.append(obj["step"])
        real(obj, path)

    monkeypatch.setattr(pt, "atomic_save", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        pt.stage1(cfg, str(crashed), config)
    monkeypatch.setattr(pt, "atomic_save", real)
    assert saves == [3]
    got = pt.stage1(cfg, str(crashed), config)
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    logs = [json.loads(x) for x in open(straight / "log.jsonl")], [json.loads(x) for x in open(crashed / "log.jsonl")]
    restarted = [[r.get("vq/restarted") for r in log if "vq/restarted" in r] for log in logs]
    assert restarted[0] == restarted[1]


def test_the_nano_preset_is_v7_with_more_understanding_per_step_and_nano_v7_is_v6_with_balanced_relations():
    """The shipped v8 is the model card's u24r12, which ran `--preset nano --set und_batch=24 --set rank_images=12 --set
    lm_steps=3000 --set s3_steps=330` when nano was v7's recipe; nano (and nano-u24r12, its name as a candidate) must be
    that recipe and nothing else. v7 (nano-v7, and nano-rel30, its name as a candidate) is v6's recipe with balanced
    GenEval relations and train-only captions."""
    from dataclasses import fields
    v6, v7, v8 = pt.PRESETS["nano-v6"], pt.PRESETS["nano-v7"], pt.PRESETS["nano"]
    assert pt.PRESETS["nano-u24r12"] == v8 and pt.PRESETS["nano-rel30"] == v7
    differ = {f.name for f in fields(v7) if getattr(v7, f.name) != getattr(v8, f.name)}
    assert differ == {"und_batch", "rank_images", "lm_steps", "s3_steps"}
    assert (v8.und_batch, v8.rank_images, v8.lm_steps, v8.s3_steps) == (24, 12, 3000, 330)
    assert (v7.und_batch, v7.rank_images, v7.lm_steps, v7.s3_steps) == (16, 6, 3600, 400)
    differ = {f.name for f in fields(v6) if getattr(v6, f.name) != getattr(v7, f.name)}
    assert differ == {"spatial_suite", "balanced_relations", "caption_train_only"}
    assert (v7.spatial_suite, v7.balanced_relations, v7.caption_train_only, v7.spatial_share) == ("geneval", True, True, 0.3)
    assert (v6.vq_steps, v6.lm_steps, v6.torch_compile) == (4000, 3600, True)
    cfg = resolve("nano", vq_from="models/nano-janus", dec_steps=0)  # the card's command on v7's VQ (v6's)
    assert (cfg.vq_from, cfg.dec_steps, cfg.balanced_relations, cfg.rank_images) == ("models/nano-janus", 0, True, 12)
    # the shipped pretrain_config.json is that command's recipe, field for field
    with open(Path(__file__).resolve().parent.parent / "models" / "nano-janus" / "pretrain_config.json") as f:
        shipped = json.load(f)
    recipe = json.loads(json.dumps(asdict(cfg)))  # tuples as JSON writes them
    assert {k: v for k, v in recipe.items() if shipped.get(k, v) != v} == {}
