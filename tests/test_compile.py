"""torch.compile in pretraining (PretrainConfig.torch_compile): the compiled VQ learns as the eager one does, and a
machine that cannot compile runs the stages eagerly."""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import JanusVQVAE, JanusVQVAEConfig
from transformers.models.janus.modeling_janus import JanusVQVAEConvUpsample

from gvu.models.vq_train import NearestUpsample2x, compile_vq, fp32_group_norms, vq_loss


@pytest.fixture(scope="module")
def can_compile():
    from gvu.models.pretrain import compile_works

    why = compile_works()
    if why:
        pytest.skip(f"torch.compile does not work here: {why}")


def _tiny_vq() -> JanusVQVAE:
    torch.manual_seed(0)
    cfg = JanusVQVAEConfig(base_channels=32, channel_multiplier=[1, 2], latent_channels=32, embed_dim=8,
                           num_embeddings=16, num_patches=8, num_res_blocks=1)
    return fp32_group_norms(JanusVQVAE(cfg)).train()


def test_nearest_upsample_2x_repeats_each_pixel_into_a_2x2_block():
    up = JanusVQVAEConvUpsample(1)
    with torch.no_grad():  # the conv made the identity: 1 at the kernel's centre, no bias
        up.conv.weight.zero_()
        up.conv.weight[0, 0, 1, 1] = 1.0
        up.conv.bias.zero_()
    up.__class__ = NearestUpsample2x
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert up(x).tolist() == [[[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]]]


def test_nearest_upsample_2x_equals_the_library_upsampling_forward_and_backward():
    torch.manual_seed(0)
    lib = JanusVQVAEConvUpsample(4)
    ours = copy.deepcopy(lib)
    ours.__class__ = NearestUpsample2x
    assert lib.state_dict().keys() == ours.state_dict().keys()
    x1 = torch.randn(2, 4, 5, 3, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y1, y2 = lib(x1), ours(x2)
    assert torch.equal(y1, y2)
    g = torch.randn_like(y1)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    # each input pixel's gradient is the sum over its 2x2 block: the same four numbers, summed in another order
    assert torch.allclose(x1.grad, x2.grad, atol=1e-6)
    assert torch.allclose(lib.conv.weight.grad, ours.conv.weight.grad, atol=1e-5)


# slow: compiling the VQ's forward and backward took 135 s of a 13.6-minute test run on a 2-core AVX2-only CPU. The
# swap it checks is tested eagerly by default (test_nearest_upsample_2x_equals_the_library_upsampling_forward_and_backward),
# and pretraining takes this bf16 path only where the CPU has bf16 natively (pretrain.use_bf16)
@pytest.mark.slow
def test_compiled_vq_passes_the_gradient_back_to_the_encoder_under_bf16_autocast(can_compile):
    """The inductor bug NearestUpsample2x works around: compiled under CPU bf16 autocast with F.interpolate, everything
    before the decoder's last upsampling got a gradient of exactly zero (on this tiny VQ: post_quant_conv and the
    decoder's first layers; checked by compiling without the swap)."""
    eager = _tiny_vq()
    compiled = compile_vq(copy.deepcopy(eager))
    assert any(type(m) is NearestUpsample2x for m in compiled.modules())
    pixels = torch.rand(4, 3, 32, 32) * 2 - 1
    grads, losses = [], []
    for vq in (eager, compiled):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = vq_loss(vq, pixels, edge_weight=1.0)[0]
        loss.backward()
        losses.append(loss.item())
        grads.append({n: p.grad for n, p in vq.named_parameters() if p.grad is not None})
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    assert grads[0].keys() == grads[1].keys()
    for name in ("encoder.conv_in.weight", "quant_conv.weight", "post_quant_conv.weight", "decoder.conv_in.weight"):
        assert grads[0][name].abs().sum() > 0, name
        assert grads[1][name].abs().sum() > 0, name  # zero here before the fix
        cos = F.cosine_similarity(grads[0][name].flatten(), grads[1][name].flatten(), dim=0)
        assert cos > 0.5, (name, cos.item())  # bf16 rounding alone moves it (nano VQ: cosines 0.77-1.00)


def test_compile_works_says_why_when_torch_cannot_compile(monkeypatch):
    import gvu.models.pretrain as pt

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Compiler: cc is not found.\nmore detail")

    monkeypatch.setattr(torch, "compile", no_compiler)
    assert pt.compile_works() == "RuntimeError: Compiler: cc is not found."


def test_a_recipe_that_asks_for_compile_runs_eagerly_where_torch_cannot_compile(tmp_path, monkeypatch, capsys):
    from dataclasses import replace

    import gvu.models.pretrain as pt
    from gvu.models.pretrain import kernels

    monkeypatch.setattr(kernels, "compile_works", lambda device: "RuntimeError: no C++ compiler")
    monkeypatch.setattr(kernels, "_COMPILE_CHECKED", {})
    compiled = []
    monkeypatch.setattr(kernels, "compile_vq", lambda vq: compiled.append("vq"))
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    cfg = replace(pt.PRESETS["smoke"], torch_compile=True, vq_steps=2, dec_steps=1, vis_steps=2, lm_steps=2,
                  s3_steps=1, threads=1)
    pt.run_stages(cfg, str(tmp_path))
    assert compiled == []
    assert "torch.compile does not work here (RuntimeError: no C++ compiler); running the stages eagerly" \
        in capsys.readouterr().out
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_compiled_language_model_stage_learns_as_the_eager_one_and_hands_back_an_eager_model(tmp_path, monkeypatch,
                                                                                                  can_compile):
    from dataclasses import replace

    import gvu.models.pretrain as pt

    compiled, real = [], torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__)
                        or real(self, *a, **k))

    cfg = replace(pt.PRESETS["smoke"], vq_steps=2, dec_steps=0, vis_steps=0, lm_steps=3, threads=1, aux_weight=0.0)
    vq_state = None
    logs = {}
    for flag in (False, True):
        out = str(tmp_path / str(flag))
        spec, tok, config = pt.stage0(cfg, out)
        vq_state = vq_state or pt.stage1(cfg, out, config)  # one VQ for both: only stage 2 differs
        model = pt.stage2(replace(cfg, torch_compile=flag), out, spec, tok, config, vq_state)
        assert model.model.language_model._compiled_call_impl is None
        with open(os.path.join(out, "log.jsonl")) as f:
            logs[flag] = [r for r in map(json.loads, f) if r["stage"] == 2]
    # the second run's language model, and nothing else (Sequential: use_compile's probe, when this process has not
    # run it yet)
    assert [name for name in compiled if name != "Sequential"] == ["LlamaModel"]
    # smoke's stages run in fp32 (bf16=False): the compiled steps' losses are the eager ones up to float rounding
    assert [r["step"] for r in logs[True]] == [r["step"] for r in logs[False]] == [3]
    for key in ("loss/gen", "loss/und", "loss/rank"):
        assert logs[True][0][key] == pytest.approx(logs[False][0][key], rel=5e-3), key


def test_a_run_begun_compiled_resumes_eagerly_and_says_so(tmp_path, capsys):
    from dataclasses import asdict, replace

    from gvu.models.pretrain import PRESETS, RunFolder

    meta = tmp_path / "pretrain_config.json"
    cfg = PRESETS["nano"]
    assert cfg.torch_compile
    meta.write_text(json.dumps(asdict(cfg)))
    RunFolder.check_same_recipe(replace(cfg, torch_compile=False), str(meta))
    assert "torch_compile=False (begun with True)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="different config"):  # a field that changes the recipe still refuses
        RunFolder.check_same_recipe(replace(cfg, vq_steps=3000), str(meta))


def test_the_compile_probe_leaves_the_random_streams_alone(can_compile):
    from gvu.models.pretrain import compile_works

    state = torch.get_rng_state()
    assert compile_works() == ""
    assert torch.equal(torch.get_rng_state(), state)  # a resumed stage draws what an uninterrupted one would
