"""X-Omni specifics on a tiny random X-Omni folder: checkpoint key names, the two heads, the adapter layers that
update image positions only, the SigLIP-VQ tokenizer, the FLUX conditioning, and the errors for bad input."""

import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from gvu.models.xomni import CheckpointError, XOmniBackend, XOmniBackendConfig, check_checkpoint
from gvu.models.xomni.lm import XOmniForCausalLM, attention_mask, checkpoint_keys, is_adapter_layer, qwen2_config
from gvu.models.xomni.siglip_vq import vit_state_from_timm
from gvu.models.xomni.tiny import build_tiny_xomni, lm_config, timm_vit_state

pytest.importorskip("diffusers", reason="X-Omni's decoder needs diffusers (pip install 'gvu[xomni]')")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return build_tiny_xomni(str(tmp_path_factory.mktemp("xomni")))


@pytest.fixture(scope="module")
def backend(folders):
    return XOmniBackend.from_pretrained(folders[0])


def lm():
    torch.manual_seed(0)
    model = XOmniForCausalLM(qwen2_config(lm_config())).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def run(model, ids):
    m, t = ids.shape
    return model.model(ids, torch.ones(m, t, dtype=torch.long), torch.arange(t).expand(m, t))


def test_module_names_are_the_published_checkpoints_keys():
    model = lm()
    assert sorted(model.state_dict()) == checkpoint_keys(model.config)
    assert "model.layers.3.self_attn.q_proj.bias" in checkpoint_keys(model.config)  # Qwen2's q/k/v carry biases
    assert not [k for k in checkpoint_keys(model.config) if "embed_tokens" in k and "_embed_tokens" not in k]


def test_the_first_and_last_adapter_layers_are_the_configured_ones():
    cfg = qwen2_config({**lm_config(layers=10), "num_mm_adap_layers": 4, "num_mm_head_layers": 4})
    assert [i for i in range(10) if is_adapter_layer(cfg, i)] == [0, 1, 2, 3, 6, 7, 8, 9]  # 4 first, 4 last; 4 and 5 read everything


def test_adapter_layers_update_image_positions_only():
    model, ids = lm(), torch.tensor([[5, 17, 40, 77, 9]])  # text only
    image = torch.tensor([[5, 17, 300 + 3, 300 + 60, 300 + 7]])  # text, then image codes
    base_text, base_image = run(model, ids), run(model, image)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(1.0)  # an adapter layer
    assert torch.equal(run(model, ids), base_text)  # text positions pass the adapter layer unchanged
    after = run(model, image)
    assert torch.equal(after[:, :2], base_image[:, :2]) and not torch.allclose(after[:, 2:], base_image[:, 2:])
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(1.0)  # a middle layer: every position
    assert not torch.allclose(run(model, ids), base_text)


def test_each_mode_reads_its_own_head_and_norm():
    model = lm()
    ids = torch.tensor([[5, 17, 300 + 3, 300 + 60]])
    hidden = run(model, ids)
    model.set_generation_mode("text")
    text = model.logits(hidden)
    model.set_generation_mode("image")
    image = model.logits(hidden)
    assert text.shape[-1] == 300 and image.shape[-1] == 64  # the text vocabulary; the codes (no mm specials)
    assert torch.equal(text, model.lm_head(hidden)) and torch.equal(image, model.mm_head(hidden)[..., :64])
    with torch.no_grad():
        model.model.lm_norm.weight.mul_(3.0)
    after = run(model, ids)
    assert not torch.allclose(after[:, :2], hidden[:, :2]) and torch.equal(after[:, 2:], hidden[:, 2:])
    with pytest.raises(ValueError, match="generation mode"):
        model.set_generation_mode("video")


def test_a_padding_query_attends_only_to_itself_and_real_tokens_never_see_padding():
    mask = attention_mask(torch.tensor([[0, 1, 1]]), 3)[0, 0]
    assert mask.tolist() == [[True, False, False], [False, True, False], [False, True, True]]


def test_the_codebook_picks_the_nearest_normalised_code_as_x_omnis_squared_distance_does():
    from gvu.models.xomni.siglip_vq import Codebook

    book = Codebook(3, 2)
    with torch.no_grad():
        book.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]]))
    z = torch.tensor([[3.0, 0.5], [0.1, 5.0], [-2.0, -1.5]])
    zn, en = F.normalize(z, dim=-1), F.normalize(book.embedding.weight, dim=-1)
    d = (zn ** 2).sum(1, keepdim=True) + (en ** 2).sum(1) - 2 * zn @ en.T  # X-Omni's IBQ distance
    assert book.nearest(z).tolist() == d.argmin(1).tolist() == [0, 1, 2]


def test_timm_vit_weights_convert_both_ways(backend):
    state = backend.image_tokenizer.state_dict()
    vit = {k: v for k, v in state.items() if k.startswith(("embeddings.", "encoder."))}
    back = vit_state_from_timm(timm_vit_state(vit))
    assert back.keys() == vit.keys() and all(torch.equal(back[k], vit[k]) for k in vit)


def test_the_decoder_reads_the_siglip_features_and_the_prompt(backend):
    tokens = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(0))
    seed = torch.tensor([3])
    a = backend.decode_images(tokens, ["a red cube"], seed)
    assert torch.equal(a, backend.decode_images(tokens, ["a red cube"], seed))
    assert not torch.allclose(a, backend.decode_images(tokens, ["two blue dogs"], seed))
    assert not torch.allclose(a, backend.decode_images(tokens, ["a red cube"], torch.tensor([4])))
    hook = backend.decoder.conditioning
    with torch.no_grad():
        saved = hook.siglip_embed.weight.clone()
        hook.siglip_embed.weight.zero_()  # X-Omni's initialisation: the codes then change nothing
        try:
            other = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(1))
            assert torch.equal(backend.decode_images(tokens, ["a red cube"], seed),
                               backend.decode_images(other, ["a red cube"], seed))
        finally:
            hook.siglip_embed.weight.copy_(saved)


def test_understanding_reads_the_image_re_tokenised_into_codes(backend):
    px = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = backend.image_codes(px)
    assert codes.shape == (2, 4, 4) and int(codes.max()) < 64
    before, after = backend.understanding_parts("Describe the image in detail.", 4, 4)
    text = backend.tokenizer.decode(before) + "|" + backend.tokenizer.decode(after)
    assert text == ("<|im_start|>user\n<SOM>4 4<IMAGE>|<EOM>\nDescribe the image in detail.<|im_end|>\n"
                    "<|im_start|>assistant\n")


def test_the_generation_prompt_is_raw_text_then_the_image_prefix(backend):
    assert backend.tokenizer.decode(backend.prompt_ids("a cat")) == "a cat<SOM>4 4<IMAGE>"


def test_a_folder_that_is_not_x_omni_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "janus"}))
    with pytest.raises(CheckpointError, match="not X-Omni"):
        check_checkpoint(str(tmp_path))


def test_a_missing_flux_folder_is_named_with_the_extra(folders, tmp_path):
    with pytest.raises(ValueError, match=r"no FLUX.1-dev pipeline at .*nowhere.*gvu\[xomni\]"):
        XOmniBackend.from_pretrained(folders[0], flux_dir=str(tmp_path / "nowhere"))


def test_an_image_size_off_the_token_grid_is_refused():
    with pytest.raises(CheckpointError, match="not a multiple of the 16-pixel"):
        XOmniBackendConfig(image_size=580)


def test_missing_language_model_weights_are_refused(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "x"
    shutil.copytree(folders[0], copy)
    state = load_file(os.path.join(copy, "model.safetensors"))
    del state["mm_head.weight"]
    save_file(state, os.path.join(copy, "model.safetensors"))
    with pytest.raises(CheckpointError, match="mm_head.weight"):
        XOmniBackend.from_pretrained(str(copy))


def test_the_xomni_en_presets_lora_wraps_the_seven_projections_of_every_layer(folders):
    from gvu.config import TrainConfig
    from gvu.model_cli import CONFIG_DIR
    from gvu.train import setup_trainable

    preset = json.loads((CONFIG_DIR / "xomni-en.json").read_text())
    assert (preset["lora_r"], preset["lora_alpha"], preset["lr"], preset["beta"], preset["group_size"],
            preset["batch_prompts"], preset["sampling"]["guidance"], preset["sampling"]["min_p"]) == \
        (8, 32, 1e-6, 0.03, 2, 8, False, 0.03)
    backend = XOmniBackend.from_pretrained(folders[0])
    params, _ = setup_trainable(backend, TrainConfig(lora_r=8, lora_alpha=32, lora_target=preset["lora_target"]))
    wrapped = {n.rsplit(".lora_", 1)[0] for n, p in backend.model.named_parameters() if p.requires_grad}
    assert len(wrapped) == 4 * 7 and all(".layers." in n for n in wrapped)
    assert all("lora_" in n for n, p in backend.model.named_parameters() if p.requires_grad)


def test_the_reward_equals_the_official_per_token_loop(backend):
    """matrix0721/GvU's gvu_score: per image, one forward per prompt token over the chat-templated image and query,
    the softmax probability of the next prompt token multiplied up, then the L-th root."""
    from gvu.config import RewardConfig
    from gvu.reward import gvu_reward

    prompts = ["a red cube", "two blue dogs on a mat"]
    px = torch.rand(2, 3, 32, 32) * 2 - 1
    fast = gvu_reward(backend, px, prompts, RewardConfig()).rewards
    backend.model.set_generation_mode("text")
    codes = backend.image_codes(px)
    before, after = backend.understanding_parts("Describe the image in detail.", 4, 4)
    for i, prompt in enumerate(prompts):
        ids = before + (codes[i].flatten() + backend.vocab_size).tolist() + after
        gt = backend.tokenizer.encode(prompt)
        product = 1.0
        for token in gt:
            t = torch.tensor([ids])
            with torch.no_grad():
                logits = backend.model(t, torch.ones_like(t), torch.arange(len(ids))[None])[0, -1]
            product *= float(logits.softmax(-1)[token])
            ids = ids + [token]
        assert float(fast[i]) == pytest.approx(product ** (1 / len(gt)), rel=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(backend):
    tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))
    weight = backend.model.mm_head.weight
    grads = []
    for context in (backend.checkpointed, None):
        weight.requires_grad_(True)
        with context() if context else torch.enable_grad():
            backend.image_token_logprobs(["a cat", "two dogs"], tokens).sum().backward()
        grads.append(weight.grad.clone())
        weight.grad = None
    weight.requires_grad_(False)
    assert torch.allclose(grads[0], grads[1], atol=1e-6) and grads[0].abs().sum() > 0


def test_sliding_window_attention_is_refused():
    with pytest.raises(ValueError, match="sliding-window"):
        qwen2_config({**lm_config(), "use_sliding_window": True})


def test_guided_teacher_forcing_equals_the_guided_cached_sampler(backend, monkeypatch):
    import gvu.models.decode_engines as decode_engines
    from gvu.config import SamplingConfig

    seen, real = [], decode_engines.sample
    monkeypatch.setattr(decode_engines, "sample", lambda logits, *a: seen.append(logits) or real(logits, *a))
    prompts = ["a cat", "two dogs on a long red mat"]  # unequal lengths: left padding on both branches
    tokens = backend.sample_image_tokens(prompts, SamplingConfig(guidance=True, cfg_scale=2.5, seed=3))
    cached = F.log_softmax(torch.stack(seen, 1), -1).gather(-1, tokens[..., None]).squeeze(-1)
    forced = backend.image_token_logprobs(prompts, tokens, guidance=2.5).detach()
    assert torch.allclose(cached, forced, atol=1e-5)


def test_a_training_run_evaluates_and_draws_its_grids_with_x_omni(folders, tmp_path):
    from gvu.config import SamplingConfig, TrainConfig
    from gvu.train import train

    cfg = TrainConfig(model=folders[0], steps=1, batch_prompts=2, group_size=2, train_prompts=8, eval_every=1,
                      eval_prompts=2, eval_images_per_prompt=1, grid_every=1, grid_prompts=2, threads=1,
                      final_eval=False, warmup_steps=0, sampling=SamplingConfig(guidance=False, min_p=0.03))
    train(cfg, str(tmp_path / "run"), progress=False)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert any("eval/overall" in r for r in rows) and any("reward/mean" in r for r in rows)
    assert (tmp_path / "run" / "grids" / "step_000001.png").exists()
    assert len(open(tmp_path / "run" / "diagnostics.jsonl").readlines()) == 4  # 2 grid prompts at steps 0 and 1
