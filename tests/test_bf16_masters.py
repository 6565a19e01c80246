"""bf16 full fine-tuning (gvu/master_weights.py): fp32 master weights and AdamW state under bf16 compute. Updates far
below bf16's resolution add up in the masters, the forward passes compute in bf16, checkpoints hold the masters and
a resumed run equals an uninterrupted one."""

import pytest
import torch
from safetensors.torch import load_file

import gvu.train as train_mod
from gvu.config import TrainConfig
from gvu.master_weights import compute_context, fp32_masters, weights_dtype

LR = 1e-6  # AdamW moves a weight by about lr a step: 2^-20, far below bf16's 2^-8 of a weight of size ~0.05


def bf16_full(model_dir, **kw):
    base = dict(model=model_dir, dtype="bfloat16", lora_r=0, steps=3, batch_prompts=2, group_size=2, train_prompts=16,
                eval_every=0, grid_every=0, checkpoint_every=1, threads=1, final_eval=False, lr=LR, warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def test_bf16_full_finetuning_keeps_fp32_masters_and_lora_keeps_bf16_weights():
    full, lora = TrainConfig(dtype="bfloat16", lora_r=0), TrainConfig(dtype="bfloat16", lora_r=4)
    full.validate()
    assert fp32_masters(full) and weights_dtype(full) == torch.float32
    assert not fp32_masters(lora) and weights_dtype(lora) == torch.bfloat16
    assert weights_dtype(TrainConfig()) == torch.float32 and not fp32_masters(TrainConfig())
    with compute_context(full)():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    with compute_context(lora)():
        assert not torch.is_autocast_enabled("cpu")


def test_the_arithmetic_a_bf16_weight_rounds_an_update_of_lr_away_and_an_fp32_one_keeps_it():
    w = torch.tensor(0.05)
    assert (w.bfloat16() + LR).bfloat16() == w.bfloat16()  # 0.05 + 1e-6 rounds back to 0.05 in bf16 (step 2^-13)
    assert w + LR != w  # fp32's step at 0.05 is 2^-28 ~ 3.7e-9


def test_updates_below_bf16_resolution_accumulate_in_the_fp32_masters(model_dir, tmp_path, monkeypatch):
    box, dtypes = {}, set()
    real = train_mod.setup_trainable

    def spy(backend, c):
        out = real(backend, c)
        box["model"] = backend.model
        box["before"] = {n: p.detach().clone() for n, p in backend.model.named_parameters() if p.requires_grad}
        layer = backend.model.model.language_model.layers[0].mlp.down_proj
        layer.register_forward_hook(lambda mod, args, out: dtypes.add(out.dtype))
        return out

    monkeypatch.setattr(train_mod, "setup_trainable", spy)
    train_mod.train(bf16_full(model_dir), str(tmp_path / "run"), progress=False)
    model, before = box["model"], box["before"]
    after = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    assert all(p.dtype == torch.float32 for p in after.values())
    assert dtypes == {torch.bfloat16}  # rollout, reward and update computed in bf16
    # weights of size >= 0.01, where bf16's half step is >= 2^-15 ~ 3e-5, ten times the 3 steps' total move
    big = {n: before[n].abs() >= 0.01 for n in after}
    moved = sum(int((after[n] != before[n])[big[n]].sum()) for n in after)
    # the same updates applied to bf16 weights: w_bf16 + (after - before) rounds back to w_bf16
    lost = sum(int(((before[n].bfloat16().float() + (after[n] - before[n])).bfloat16() == before[n].bfloat16())[big[n]]
                   .sum()) for n in after)
    total = sum(int(b.sum()) for b in big.values())
    assert total > 10_000
    assert moved > 0.5 * total  # the rest had no gradient (embedding rows of tokens no prompt or image used)
    assert lost == total
    # the optimiser's state is fp32 too, and the checkpoint holds the fp32 masters as they are
    ckpt = load_file(str(tmp_path / "run/checkpoints/step_000003/trainable.safetensors"))
    assert all(ckpt[n].dtype == torch.float32 and torch.equal(ckpt[n], after[n]) for n in after)


def test_resume_of_bf16_full_finetuning_equals_an_uninterrupted_run(model_dir, tmp_path, monkeypatch):
    cfg = bf16_full(model_dir, steps=3)
    train_mod.train(cfg, str(tmp_path / "straight"), progress=False)
    real_update, calls = train_mod.update, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_update(*a, **k)

    monkeypatch.setattr(train_mod, "update", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, str(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(train_mod, "update", real_update)
    train_mod.train(cfg, str(tmp_path / "resumed"), resume=True, progress=False)
    a = load_file(str(tmp_path / "straight/checkpoints/step_000003/trainable.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/step_000003/trainable.safetensors"))
    start = load_file(str(tmp_path / "straight/checkpoints/step_000002/trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(a[k].dtype == torch.float32 for k in a)
    assert any(not torch.equal(a[k], start[k]) for k in a)  # the resumed step did move the masters
