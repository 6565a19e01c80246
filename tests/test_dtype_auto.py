"""dtype=auto: bfloat16 where the device computes bf16 natively, float32 elsewhere, decided once when a run starts and
recorded in its config.json; a resumed run keeps the dtype it began with, whatever machine resumes it."""

import json

import pytest

import gvu.precision
import gvu.train as train_mod
from gvu.config import ConfigError, TrainConfig
from gvu.master_weights import fp32_masters, resolve_dtype


def native(monkeypatch, answer: bool) -> list[str]:
    """Make this machine report bf16 as native (or not); returns the devices it was asked about."""
    asked = []

    def probe(device="cpu"):
        asked.append(device)
        return answer

    monkeypatch.setattr(gvu.precision, "bf16_is_native", probe)
    return asked


def test_auto_picks_bfloat16_where_native_and_float32_elsewhere(monkeypatch):
    asked = native(monkeypatch, True)
    assert resolve_dtype(TrainConfig(dtype="auto", device="cpu")).dtype == "bfloat16"
    assert asked == ["cpu"]
    native(monkeypatch, False)
    assert resolve_dtype(TrainConfig(dtype="auto")).dtype == "float32"


def test_auto_on_resume_keeps_the_runs_dtype_and_concrete_dtypes_pass_through(monkeypatch):
    asked = native(monkeypatch, True)
    assert resolve_dtype(TrainConfig(dtype="auto"), resumed_dtype="float32").dtype == "float32"
    native(monkeypatch, False)
    assert resolve_dtype(TrainConfig(dtype="auto"), resumed_dtype="bfloat16").dtype == "bfloat16"
    for dtype in ("float32", "bfloat16"):
        cfg = TrainConfig(dtype=dtype)
        assert resolve_dtype(cfg, resumed_dtype="float32" if dtype == "bfloat16" else "bfloat16") is cfg
    assert asked == []  # a resumed run's or a concrete dtype needs no probe
    # full fine-tuning under an auto that chose bf16 keeps fp32 masters
    assert fp32_masters(resolve_dtype(TrainConfig(dtype="auto", lora_r=0), resumed_dtype="bfloat16"))


def test_an_unknown_dtype_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match=r"dtype must be one of \('float32', 'bfloat16', 'auto'\) \(got 'half'\)"):
        TrainConfig(dtype="half").validate()


def tiny_run(model_dir, **kw):
    base = dict(model=model_dir, dtype="auto", lora_r=0, steps=1, batch_prompts=2, group_size=2, train_prompts=16,
                eval_every=0, grid_every=0, checkpoint_every=1, threads=1, final_eval=False, warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def test_a_run_records_the_chosen_dtype_and_resumes_with_it_on_a_machine_that_would_choose_otherwise(
        model_dir, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    native(monkeypatch, True)
    train_mod.train(tiny_run(model_dir, steps=1), str(run), progress=False)
    assert json.loads((run / "config.json").read_text())["dtype"] == "bfloat16"
    assert "[gvu] dtype auto: bfloat16 (bf16 is native on this device)" in capsys.readouterr().out
    # the same recipe, more steps, resumed where bf16 is not native: the run's own bfloat16 (no config mismatch)
    native(monkeypatch, False)
    train_mod.train(tiny_run(model_dir, steps=2), str(run), resume=True, progress=False)
    assert json.loads((run / "config.json").read_text())["dtype"] == "bfloat16"
    assert "[gvu] dtype auto: bfloat16 (the resumed run's)" in capsys.readouterr().out
    assert (run / "checkpoints/step_000002").is_dir()
    # a new run on that machine chooses float32
    train_mod.train(tiny_run(model_dir), str(tmp_path / "other"), progress=False)
    assert json.loads((tmp_path / "other/config.json").read_text())["dtype"] == "float32"


def test_a_cuda_gpu_counts_as_native_only_without_emulation(monkeypatch):
    import torch

    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: asked.append(including_emulation) or including_emulation)
    assert gvu.precision.bf16_is_native("cuda") is False  # a GPU that supports bf16 only by emulation (V100, T4)
    assert asked == [False]


def test_a_resume_that_asks_another_dtype_than_the_runs_is_refused(model_dir, tmp_path, monkeypatch):
    native(monkeypatch, True)
    run = tmp_path / "run"
    train_mod.train(tiny_run(model_dir), str(run), progress=False)  # auto -> bfloat16
    with pytest.raises(ConfigError, match=r"the config differs from the run's own \(\{'dtype': \('bfloat16', 'float32'\)\}\)"):
        train_mod.train(tiny_run(model_dir, dtype="float32"), str(run), resume=True, progress=False)


def test_every_row_of_a_comparison_gets_this_machines_concrete_dtype(monkeypatch):
    from argparse import Namespace

    from gvu.compare import row_config

    def args(*sets):
        return Namespace(model="models/nano-janus", steps=10, set=list(sets), threads=1, eval_prompts=None)

    native(monkeypatch, True)
    assert {row_config(name, 0, args()).dtype for name in ("base", "gvu_policy")} == {"bfloat16"}
    native(monkeypatch, False)
    assert row_config("gvu_policy", 0, args()).dtype == "float32"
    assert row_config("gvu_policy", 0, args("dtype=bfloat16")).dtype == "bfloat16"
