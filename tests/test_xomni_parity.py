"""gvu's X-Omni port against the official X-Omni modeling code (matrix0721/GvU omni_r1/models), on the tiny random
config whose weights, inputs and outputs tests/data/xomni_parity/make_reference.py saved from the official code:
the same weights give the same numbers (1e-5), and the official weight names load with no renaming."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gvu.models.xomni.lm import XOmniForCausalLM, checkpoint_keys, qwen2_config
from gvu.models.xomni.siglip_vq import SiglipVQ, TokenizerConfig, vit_state_from_timm

DATA = Path(__file__).parent / "data" / "xomni_parity"
LM = dict(model_type="x-omni", vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0,
          rms_norm_eps=1e-6, tie_word_embeddings=False, num_mm_adap_layers=1, num_mm_head_layers=1,
          mm_vocab_size=72, image_vocab_size=64)
TOKENIZER = TokenizerConfig(width=32, layers=2, heads=2, mlp_ratio=2.0, patch_size=16, pos_grid=128, z_channels=32,
                            codebook_size=64, codebook_dim=8)


@pytest.fixture(scope="module")
def saved():
    if not (DATA / "reference.safetensors").exists():
        pytest.skip(f"no reference tensors in {DATA} (make_reference.py writes them)")
    weights = {k: v.float() for k, v in load_file(str(DATA / "weights.safetensors")).items()}
    return weights, load_file(str(DATA / "reference.safetensors"))


def part(weights, prefix):
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


@pytest.fixture(scope="module")
def port(saved):
    model = XOmniForCausalLM(qwen2_config(LM)).eval()
    model.load_state_dict(part(saved[0], "lm."), strict=True)  # the official names, as they are
    return model


def test_the_official_models_weight_names_are_the_ports(saved, port):
    assert sorted(part(saved[0], "lm.")) == checkpoint_keys(port.config)


@pytest.mark.parametrize("mode", ["text", "image"])
def test_logits_equal_the_official_codes_in_each_mode(saved, port, mode):
    ref = saved[1]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    positions = torch.arange(ids.shape[1]).expand_as(ids)  # the official forward's positions without generate()
    port.set_generation_mode(mode)
    with torch.no_grad():
        logits = port(ids, mask, positions)
    real = mask.bool()  # padding queries differ by design (the official eager attention spreads them over pads)
    assert logits.shape == ref[f"logits_{mode}"].shape
    torch.testing.assert_close(logits[real], ref[f"logits_{mode}"][real], atol=1e-5, rtol=1e-5)


def test_the_image_tokenizers_codes_and_decoded_features_equal_the_officials(saved):
    weights, ref = saved
    vq = SiglipVQ(TOKENIZER).eval()
    missing, _ = vq.load_state_dict({**vit_state_from_timm(part(weights, "vit.")), **part(weights, "projector.")},
                                    strict=False)
    assert missing == []
    with torch.no_grad():
        codes = vq.encode(ref["pixels"])
        decoded = vq.decode(ref["codes"])
    assert torch.equal(codes, ref["codes"]) and len(ref["codes"].unique()) > 3
    m, z, h, w = ref["decoded"].shape
    torch.testing.assert_close(decoded, ref["decoded"].flatten(2).transpose(1, 2), atol=1e-5, rtol=1e-5)


def test_the_flux_decoder_makes_the_official_pipelines_images(saved, tmp_path):
    import shutil

    pytest.importorskip("diffusers", reason="X-Omni's decoder needs diffusers (pip install 'gvu[xomni]')")

    from gvu.models.xomni.flux_decoder import DecoderConfig, FluxDecoder

    ref = saved[1]
    shutil.copytree(DATA / "decoder", tmp_path / "decoder")  # an X-Omni folder holding only its FLUX transformer
    config = DecoderConfig(model_path="decoder", upscale_factor=8, num_inference_steps=2, cfg_scale=2.0,
                           guidance_scale=1.0, max_sequence_length=16, decode_batch=2)
    decoder = FluxDecoder.load(str(DATA / "flux"), str(tmp_path), config, 32, torch.float32, "cpu")
    pixels = decoder.decode(ref["flux_features"], ["a red cube", "two blue dogs"], torch.tensor([0, 1]), 32,
                            latents=ref["flux_latents"])
    official = ref["flux_images"]  # [0, 1], the pipeline's output_type="pt"
    assert float(official.std()) > 0.01
    torch.testing.assert_close((pixels + 1) / 2, official, atol=1e-5, rtol=1e-5)


def test_the_cached_sampler_makes_the_official_generates_greedy_tokens_with_and_without_guidance(saved, port,
                                                                                                   monkeypatch):
    import gvu.models.decode_engines as decode_engines

    from gvu.config import SamplingConfig
    from gvu.models.xomni import XOmniBackend, XOmniBackendConfig
    from gvu.models.xomni.tiny import xomni_tokenizer

    ref = saved[1]
    backend = XOmniBackend(port, xomni_tokenizer(64), SiglipVQ(TOKENIZER), None,
                           XOmniBackendConfig(image_size=24, downsample=8))  # a 3 x 3 grid: "<SOM>3 3<IMAGE>"
    prompts = ["a red cube", "two blue dogs on a mat"]
    assert torch.equal(backend.prompt_batch(prompts).ids, ref["generation_prompt_ids"])
    greedy = SamplingConfig(guidance=False, top_k=1)
    seen, real = [], decode_engines.sample
    monkeypatch.setattr(decode_engines, "sample", lambda logits, *a: seen.append(logits) or real(logits, *a))
    assert torch.equal(backend.sample_image_tokens(prompts, greedy), ref["greedy_tokens"])
    # every step's logits through the KV cache, left padding included, equal the official generate's scores
    torch.testing.assert_close(torch.stack(seen, 1), ref["greedy_step_logits"], atol=1e-5, rtol=1e-5)
    guided = SamplingConfig(guidance=True, cfg_scale=3.0, top_k=1)  # transformers guides log-softmaxes: same argmax
    assert torch.equal(backend.sample_image_tokens(prompts, guided), ref["greedy_cfg3_tokens"])
    assert not torch.equal(ref["greedy_tokens"], ref["greedy_cfg3_tokens"])
