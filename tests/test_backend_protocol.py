"""The unified-model protocol, checked alike on both backends: a tiny random Janus (nano smoke) and a tiny random
X-Omni (Qwen2 LM, SigLIP-VQ, FLUX with tiny CLIP/T5 encoders and VAE), each saved as a folder and loaded as users do."""

import importlib
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import gvu.train as train_mod
from gvu.config import SamplingConfig, TrainConfig
from gvu.models.adapter import decode_seeds
from gvu.models.registry import load_backend
from gvu.rollout import rollout

QUERY = "Describe the image in detail."
PROMPTS = ["a photo of a red circle", "a photo of two stars and a blue heart", "a photo of a star"]
SAMPLER_MODULE = {"janus": "gvu.models.decode_engines", "xomni": "gvu.models.decode_engines"}  # the one sampling loop


@pytest.fixture(scope="module", params=["janus", "xomni"])
def model_dir(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "janus":
        from gvu.models.nano import SPECS, build_random
        from gvu.models.pretrain import save_model

        model, tok = build_random("smoke", seed=0)
        save_model(model, tok, SPECS["smoke"], str(root / "model"))
        return request.param, str(root / "model")
    pytest.importorskip("diffusers", reason="X-Omni's decoder needs diffusers (pip install 'gvu[xomni]')")
    from gvu.models.xomni.tiny import build_tiny_xomni

    return request.param, build_tiny_xomni(str(root))[0]


@pytest.fixture(scope="module")
def backend(model_dir):
    return load_backend(model_dir[1])


def sampling(**kw):
    return SamplingConfig(guidance=False, **kw)


def test_rollout_has_the_documented_shapes_and_is_reproducible_from_its_seed(backend):
    md = [{"prompt": p} for p in PROMPTS[:2]]
    a = rollout(backend, md, 2, sampling(seed=4))
    b = rollout(backend, md, 2, sampling(seed=4))
    c = rollout(backend, md, 2, sampling(seed=5))
    assert a.tokens.shape == (4, backend.num_image_tokens) and a.pixels.shape == (4, 3, backend.image_size, backend.image_size)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.pixels, b.pixels)
    assert not torch.equal(a.tokens, c.tokens)
    assert float(a.pixels.min()) >= -1 and float(a.pixels.max()) <= 1


def test_a_rows_tokens_and_pixels_do_not_depend_on_its_batch(backend):
    s = sampling(seed=7, min_p=0.03)
    rows = torch.tensor([10, 11, 12])
    batch = backend.sample_image_tokens(PROMPTS, s, rows)
    alone = backend.sample_image_tokens(PROMPTS[1:2], s, rows[1:2])
    assert torch.equal(batch[1:2], alone)
    seeds = decode_seeds(7, rows)
    px = backend.decode_images(batch, PROMPTS, seeds)
    px_alone = backend.decode_images(alone, PROMPTS[1:2], seeds[1:2])
    assert torch.allclose(px[1:2], px_alone, atol=1e-5)


def test_teacher_forced_logprobs_equal_the_cached_samplers(backend, model_dir, monkeypatch):
    module = importlib.import_module(SAMPLER_MODULE[model_dir[0]])
    seen, real = [], module.sample

    def recording(logits, s, rows, step):
        seen.append(F.log_softmax(logits.float() / s.temperature, -1))
        return real(logits, s, rows, step)

    monkeypatch.setattr(module, "sample", recording)
    tokens = backend.sample_image_tokens(PROMPTS, sampling(seed=1, temperature=0.7))
    cached = torch.stack(seen, 1).gather(-1, tokens[..., None]).squeeze(-1)  # [M, N]
    forced = backend.image_token_logprobs(PROMPTS, tokens, temperature=0.7)
    assert torch.allclose(cached, forced.detach(), atol=1e-4)


def test_the_batched_reward_equals_a_per_row_unbatched_loop(backend):
    px = backend.decode_images(backend.sample_image_tokens(PROMPTS, sampling(seed=2)), PROMPTS, torch.arange(3))
    batched = backend.text_logprobs(px, QUERY, PROMPTS)
    for i, p in enumerate(PROMPTS):
        one = backend.text_logprobs(px[i:i + 1], QUERY, [p])
        k = int(one.mask.sum())
        assert int(batched.mask[i].sum()) == k
        assert torch.allclose(batched.logprobs[i, :k], one.logprobs[0, :k], atol=1e-5)
        assert torch.equal(batched.token_ids[i, :k], one.token_ids[0, :k])


def tiny_run(model_dir, **kw):
    base = dict(model=model_dir, steps=2, batch_prompts=2, group_size=2, train_prompts=16, eval_every=0, grid_every=0,
                checkpoint_every=1, threads=1, final_eval=False, lr=1e-3, warmup_steps=0, sampling=sampling())
    base.update(kw)
    return TrainConfig(**base)


def lora_target(kind: str) -> str:
    """The LoRA target of the backend's presets (X-Omni's module names differ from Janus's)."""
    if kind == "janus":
        return TrainConfig().lora_target
    from gvu.model_cli import CONFIG_DIR

    return json.loads((CONFIG_DIR / "xomni-en.json").read_text())["lora_target"]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_one_step_moves_every_trainable_weight(model_dir, tmp_path, monkeypatch, lora):
    # LoRA's B starts at zero, so A gets no gradient on step 1: two steps move both factors
    kw = {"lora_r": 2, "lora_target": lora_target(model_dir[0]), "steps": 2} if lora else {"steps": 1}
    box, real = {}, train_mod.setup_trainable

    def spy(backend, cfg):
        out = real(backend, cfg)
        box["model"] = backend.model
        box["before"] = {n: p.detach().clone() for n, p in backend.model.named_parameters() if p.requires_grad}
        return out

    monkeypatch.setattr(train_mod, "setup_trainable", spy)
    train_mod.train(tiny_run(model_dir[1], **kw), str(tmp_path / "run"), progress=False)
    after = {n: p for n, p in box["model"].named_parameters() if p.requires_grad}
    assert len(after) > 5 and [n for n in after if torch.equal(after[n], box["before"][n])] == []
    assert all("lora_" in n for n in after) == lora


def test_resume_after_a_crash_equals_an_uninterrupted_run(model_dir, tmp_path, monkeypatch):
    cfg = tiny_run(model_dir[1], steps=2)
    train_mod.train(cfg, str(tmp_path / "straight"), progress=False)
    real, calls = train_mod.update, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(*a, **k)

    monkeypatch.setattr(train_mod, "update", crashing)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, str(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(train_mod, "update", real)
    train_mod.train(cfg, str(tmp_path / "resumed"), resume=True, progress=False)
    a = load_file(str(tmp_path / "straight/checkpoints/step_000002/trainable.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/step_000002/trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_decode_seeds_are_the_row_id_plus_the_scaled_seed():
    assert decode_seeds(2, torch.tensor([0, 5])).tolist() == [2_000_006, 2_000_011]  # 2 x 1,000,003 + row
    huge = decode_seeds(10 ** 30, torch.tensor([0]))  # a Python int far past int64 still gives a valid seed
    assert 0 <= int(huge) < 2 ** 62
