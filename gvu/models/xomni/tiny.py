"""Tiny random X-Omni folders for tests, laid out as the published checkpoint is: config.json with a vision_config,
model.safetensors (the checkpoint's key names), tokenizer.json (byte-level text, then <MM-Token-k>, then the
specials), the SigLIP ViT in timm's key names and the projector as .pth files, decoder/ (a FLUX transformer whose
safetensors also hold siglip_embed.weight), and beside it a tiny FLUX.1-dev pipeline folder (CLIP and T5 text
encoders, VAE, scheduler). Built from configs in about a second; nothing is downloaded."""

from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F

TEXT_VOCAB = 300
CODES = 64
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_tokenizer(extra_text_tokens: int = 0, model_max_length: int = 77):
    """A byte-level tokenizer (every byte one token) with <|endoftext|>, <|im_start|>, <|im_end|> and fillers up to
    3 + 256 + extra_text_tokens ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for i in range(extra_text_tokens):
        vocab[f"<unused{i}>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   model_max_length=model_max_length)
    fast.add_special_tokens({"additional_special_tokens": specials[1:]})
    return fast


def xomni_tokenizer(codes: int = CODES):
    """X-Omni's token layout in small: TEXT_VOCAB text ids (bytes), then <MM-Token-k> at TEXT_VOCAB + k, then <SOM>,
    <EOM>, <IMAGE>; a ChatML chat template."""
    tok = byte_tokenizer(TEXT_VOCAB - 259)
    tok.add_tokens([f"<MM-Token-{k}>" for k in range(codes)], special_tokens=True)
    tok.add_tokens(["<SOM>", "<EOM>", "<IMAGE>"], special_tokens=True)
    tok.chat_template = CHAT_TEMPLATE
    return tok


def timm_vit_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of siglip_vq.vit_state_from_timm: this module's ViT names -> X-Omni's timm names."""
    out = {"patch_embed.proj.weight": state["embeddings.proj.weight"], "patch_embed.proj.bias": state["embeddings.proj.bias"],
           "pos_embed": state["embeddings.pos_embed"]}
    names = {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2"}
    layers = {k.split(".")[2] for k in state if k.startswith("encoder.layers.")}
    for i in sorted(layers, key=int):
        p = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([state[f"{p}self_attn.{n}.{kind}"]
                                                            for n in ("q_proj", "k_proj", "v_proj")])
            for ours, theirs in names.items():
                out[f"blocks.{i}.{theirs}.{kind}"] = state[f"{p}{ours}.{kind}"]
    return out


def lm_config(layers: int = 4) -> dict:
    return {"model_type": "x-omni", "architectures": ["XOmniForCausalLM"], "vocab_size": TEXT_VOCAB,
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": layers, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 2048, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
            "tie_word_embeddings": False, "num_mm_adap_layers": 1, "num_mm_head_layers": 1,
            "mm_vocab_size": CODES + 8, "image_vocab_size": CODES,
            "vision_config": {
                "transform": {"short_size": 32, "long_size": 64, "patch_size": 8},
                "encoder": {"siglip_name": "tiny", "siglip_path": "siglip.pth", "projector_path": "projector.pth",
                            "z_channels": 32, "codebook_size": CODES, "codebook_dim": 16,
                            "vit": {"width": 32, "layers": 2, "heads": 2, "mlp_ratio": 2.0, "patch_size": 8,
                                    "pos_grid": 8}},
                "decoder": {"model_path": "decoder", "upscale_factor": 8, "num_inference_steps": 2, "cfg_scale": 2.0,
                            "max_sequence_length": 16, "decode_batch": 3}}}


def random_language_model(cfg: dict | None = None):
    """XOmniForCausalLM for `cfg` (default lm_config()) with weights drawn from torch's generator: matrices N(0, 0.2),
    vectors (biases, norms) their init plus N(0, 0.1), so that every layer and both norms matter."""
    from gvu.models.xomni.lm import XOmniForCausalLM, qwen2_config

    lm = XOmniForCausalLM(qwen2_config(cfg or lm_config()))
    with torch.no_grad():
        for p in lm.parameters():
            p.normal_(0, 0.2) if p.dim() > 1 else p.add_(0.1 * torch.randn_like(p))
    return lm.eval()


def generation_backend(seed: int = 0):
    """A tiny random X-Omni backend for generation alone (sampling, teacher forcing): the language model of
    build_tiny_xomni's folder for the same seed, its tokenizer, a random SigLIP-VQ and no FLUX decoder; built in
    memory, with no files and no diffusers. Image size 32 px, 4 x 4 = 16 image tokens of 64 codes."""
    from gvu.models.xomni.backend import XOmniBackend
    from gvu.models.xomni.config import XOmniBackendConfig
    from gvu.models.xomni.siglip_vq import SiglipVQ, TokenizerConfig

    torch.manual_seed(seed)
    cfg = lm_config()
    lm = random_language_model(cfg)
    vq = SiglipVQ(TokenizerConfig.from_encoder(cfg["vision_config"]["encoder"]))
    return XOmniBackend(lm, xomni_tokenizer(), vq, None, XOmniBackendConfig(image_size=32, downsample=8))


def build_tiny_xomni(root: str, seed: int = 0) -> tuple[str, str]:
    """Write a tiny X-Omni folder and a tiny FLUX.1-dev folder under root; return (xomni_dir, flux_dir).
    Image size 32 px, 4 x 4 = 16 image tokens of 64 codes."""
    from safetensors.torch import save_file

    from gvu.models.xomni.config import XOmniBackendConfig
    from gvu.models.xomni.siglip_vq import SiglipVQ, TokenizerConfig

    torch.manual_seed(seed)
    xdir, fdir = os.path.join(root, "x-omni"), os.path.join(root, "flux")
    os.makedirs(xdir, exist_ok=True)
    cfg = lm_config()
    with open(os.path.join(xdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    lm = random_language_model(cfg)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items()}, os.path.join(xdir, "model.safetensors"))

    xomni_tokenizer().save_pretrained(xdir)

    enc = cfg["vision_config"]["encoder"]
    vq = SiglipVQ(TokenizerConfig.from_encoder(enc))
    with torch.no_grad():
        vq.embeddings.pos_embed.normal_(0, 0.02)
        vq.quantize.embedding.weight.copy_(F.normalize(torch.randn(CODES, 16), dim=-1))  # X-Omni's L2-normalised init
    state = vq.state_dict()
    torch.save(timm_vit_state(state), os.path.join(xdir, "siglip.pth"))
    torch.save({k: v for k, v in state.items() if k.split(".")[0] in ("quant_conv", "quantize", "post_quant_conv",
                                                                       "post_conv")}, os.path.join(xdir, "projector.pth"))
    _build_flux(xdir, fdir, enc["z_channels"])
    XOmniBackendConfig(image_size=32, downsample=8, transform_short_size=32, transform_long_size=64,
                       flux_dir=fdir).save(xdir)
    return xdir, fdir


def _build_flux(xdir: str, fdir: str, siglip_channels: int) -> None:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    transformer = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=4, shift_factor=0.1159, scaling_factor=0.3611)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=TEXT_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                                        bos_token_id=1, eos_token_id=2, pad_token_id=0))
    t5 = T5EncoderModel(T5Config(vocab_size=TEXT_VOCAB, d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=4))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=byte_tokenizer(0, 77),
                        text_encoder_2=t5, tokenizer_2=byte_tokenizer(0, 16), transformer=transformer)
    pipe.save_pretrained(fdir)
    sub = os.path.join(xdir, "decoder")
    transformer.save_pretrained(sub)
    weights = os.path.join(sub, "diffusion_pytorch_model.safetensors")
    state = load_file(weights)
    state["siglip_embed.weight"] = 0.1 * torch.randn(transformer.inner_dim, siglip_channels)  # X-Omni zero-inits it
    save_file(state, weights)
