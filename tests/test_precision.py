"""bf16 autocast in pretraining (PretrainConfig.bf16): used only where the device computes bf16 natively; elsewhere the
stages run in fp32 and say so once."""

import json
from dataclasses import asdict, replace

import pytest
import torch

import gvu.models.pretrain as pt
from gvu import precision
from gvu.models.pretrain import kernels


@pytest.mark.parametrize("avx512_bf16, amx, native", [(False, False, False), (True, False, True), (False, True, True)])
def test_a_cpu_computes_bf16_natively_only_with_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, native):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert precision.bf16_is_native("cpu") is native


def _record_bf16_autocasts(monkeypatch) -> list[bool]:
    """Replace torch.autocast: record `enabled` of every bf16 autocast, and run each in fp32 (fast on any CPU)."""
    seen, real = [], torch.autocast

    def autocast(device_type, dtype=None, enabled=True, **kwargs):
        if dtype is torch.bfloat16:
            seen.append(bool(enabled))
            enabled = False
        return real(device_type, dtype=dtype, enabled=enabled, **kwargs)

    monkeypatch.setattr(torch, "autocast", autocast)
    return seen


@pytest.mark.parametrize("native", [False, True])
def test_a_recipe_asking_for_bf16_uses_it_only_where_the_cpu_has_it(tmp_path, monkeypatch, capsys, native):
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: native)
    monkeypatch.setattr(kernels, "_BF16_CHECKED", {})
    seen = _record_bf16_autocasts(monkeypatch)
    cfg = replace(pt.PRESETS["smoke"], bf16=True, vq_steps=2, dec_steps=1, vis_steps=2, lm_steps=2, s3_steps=1,
                  threads=1)
    pt.run_stages(cfg, str(tmp_path))
    # every stage's steps: 2 (stage 1) + 1 (1c) + 2 (1b) + 2 (2) + 1 (3), each under one autocast
    assert seen == [native] * 8
    said = capsys.readouterr().out.count("has no native bf16")
    assert said == (0 if native else 1)  # once a process, not once a stage
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_a_recipe_without_bf16_never_asks_the_device(monkeypatch):
    def probe(device):
        raise AssertionError("bf16_is_native called")

    monkeypatch.setattr(precision, "bf16_is_native", probe)
    monkeypatch.setattr(kernels, "_BF16_CHECKED", {})
    assert pt.use_bf16(replace(pt.PRESETS["smoke"], bf16=False)) is False


def test_a_run_begun_in_bf16_resumes_in_fp32_and_says_so(tmp_path, capsys):
    meta = tmp_path / "pretrain_config.json"
    cfg = pt.PRESETS["nano"]
    assert cfg.bf16
    meta.write_text(json.dumps(asdict(cfg)))
    pt.RunFolder.check_same_recipe(replace(cfg, bf16=False), str(meta))
    assert "bf16=False (begun with True)" in capsys.readouterr().out


@pytest.mark.parametrize("dtype, device, native, warns", [("bfloat16", "cpu", False, True),
                                                          ("bfloat16", "cpu", True, False),
                                                          ("float32", "cpu", False, False),
                                                          ("bfloat16", "cuda", False, False)])
def test_gvu_train_warns_of_bf16_weights_only_on_a_cpu_that_emulates_bf16(monkeypatch, dtype, device, native, warns):
    from gvu.config import TrainConfig
    from gvu.train import precision_warning

    monkeypatch.setattr(precision, "bf16_is_native", lambda device: native)
    text = precision_warning(TrainConfig(dtype=dtype, device=device, lora_r=8))
    assert bool(text) is warns
    if warns:
        assert "dtype=float32" in text
