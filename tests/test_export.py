"""`gvu export`: a 2-step LoRA run on a tiny random Janus, exported with LoRA merged, samples the run's images."""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import JanusForConditionalGeneration

import gvu.train as train_mod
from gvu.config import TrainConfig
from gvu.export import export_run
from gvu.models.nano import SPECS, build_random
from gvu.models.pretrain import save_model
from gvu.world.prompts import make_suite


def png_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> str:
    torch.set_num_threads(1)
    path = str(tmp_path_factory.mktemp("tiny") / "base")
    save_model(*build_random("smoke", seed=0), SPECS["smoke"], path)
    return path


def tiny_run(base: str, run: str, **kw) -> str:
    cfg = dict(model=base, steps=2, batch_prompts=2, group_size=2, train_prompts=16, eval_every=0, grid_every=0,
               checkpoint_every=1, threads=1, final_eval=False, lr=5e-2, warmup_steps=0)
    train_mod.train(TrainConfig(**{**cfg, **kw}), run, progress=False)
    return run


@pytest.fixture(scope="module")
def lora_run(base, tmp_path_factory) -> str:
    return tiny_run(base, str(tmp_path_factory.mktemp("run") / "lora"), lora_r=4)


@pytest.fixture(scope="module")
def exported(lora_run, tmp_path_factory) -> Path:
    return export_run(lora_run, None, tmp_path_factory.mktemp("exp") / "gvu-tiny")


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("p") / "prompts.jsonl"
    path.write_text("".join(json.dumps(m) + "\n" for m in make_suite("geneval", "eval", 3, seed=0)))
    return path


def test_the_export_is_a_transformers_checkpoint_with_lora_merged(exported, lora_run):
    names = set(os.listdir(exported))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json",
            "generation_config.json", "gvu_backend.json", "gvu_train_config.json", "gvu_export.json",
            "README.md"} <= names
    assert not [n for n in names if n.startswith(".")]
    model = JanusForConditionalGeneration.from_pretrained(exported)
    assert not [n for n, _ in model.named_parameters() if "lora" in n]
    # the merged weight is W + (alpha / r) B A of the run's adapters
    run = train_mod.load_trained(lora_run)
    name = "model.language_model.layers.0.self_attn.q_proj"
    layer = dict(run.model.named_modules())[name]
    want = layer.base_layer.weight + (16 / 4) * layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    assert not torch.equal(want, layer.base_layer.weight)  # the adapters moved: the check below can fail
    assert torch.allclose(dict(model.named_parameters())[name + ".weight"], want, atol=1e-6)
    record = json.loads((exported / "gvu_export.json").read_text())
    assert (record["step"], record["lora_merged"], record["run"]) == (2, True, os.path.realpath(lora_run))


def test_the_export_samples_the_runs_images_and_not_the_bases(exported, lora_run, base, prompts, tmp_path, gvu):
    for name, which in (("run", ("--run", lora_run)), ("export", ("--model", exported)), ("base", ("--model", base))):
        rc, _, err = gvu("generate", *which, "--prompts", prompts, "--out", tmp_path / name, "--device", "cpu")
        assert rc == 0, err
    run, export, base_images = (png_bytes(tmp_path / n) for n in ("run", "export", "base"))
    assert len(run) == 12 and export == run
    assert base_images != run


def test_the_model_card_names_the_base_the_step_and_the_last_metrics(exported, base):
    card = (exported / "README.md").read_text()
    assert f"Base model: `{base}`" in card and "step 2 of 2" in card and "LoRA r=4" in card
    assert "last training step:" in card and "reward/mean" in card


def test_full_fine_tuning_exports_the_runs_weights(base, tmp_path):
    run = tiny_run(base, str(tmp_path / "full"), steps=1)
    out = export_run(run, 1, tmp_path / "full-export")
    want = {n: p for n, p in train_mod.load_trained(run).model.state_dict().items()}
    got = JanusForConditionalGeneration.from_pretrained(out).state_dict()
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
    assert "full fine-tuning" in (out / "README.md").read_text()


def test_an_existing_out_is_refused_unless_overwrite_and_only_an_export_is_replaced(lora_run, tmp_path, gvu):
    out = export_run(lora_run, 2, tmp_path / "e")
    rc, _, err = gvu("export", lora_run, "--step", "1", "--out", out)
    assert rc == 2 and "already exists; pass --overwrite" in err
    assert json.loads((out / "gvu_export.json").read_text())["step"] == 2
    rc, _, err = gvu("export", lora_run, "--step", "1", "--out", out, "--overwrite")
    assert rc == 0, err
    assert json.loads((out / "gvu_export.json").read_text())["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e"]  # no tmp or old folder left beside it
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("user data")
    rc, _, err = gvu("export", lora_run, "--out", mine, "--overwrite")
    assert rc == 2 and "is not an earlier `gvu export`" in err and (mine / "notes.txt").read_text() == "user data"


def test_bad_steps_and_folders_are_refused_before_any_weights_load(lora_run, tmp_path, gvu, monkeypatch):
    monkeypatch.setattr(train_mod, "load_trained", lambda *a, **k: pytest.fail("weights loaded before the error"))
    rc, _, err = gvu("export", lora_run, "--step", "7", "--out", tmp_path / "x")
    assert rc == 2 and "checkpoints are at steps 1, 2" in err
    rc, _, err = gvu("export", tmp_path, "--out", tmp_path / "x")
    assert rc == 2 and "holds no run (no config.json)" in err
    rc, _, err = gvu("export", lora_run, "--out", Path(lora_run).parent)
    assert rc == 2 and "holds this export's own input" in err
    assert not (tmp_path / "x").exists()
