"""Make the reference tensors that tests/test_xomni_parity.py compares gvu's X-Omni port against.

It runs the OFFICIAL X-Omni modeling code (matrix0721/GvU, omni_r1/models/: modeling_xomni.py, configuration_xomni.py,
modeling_siglip_tokenizer.py, modeling_vit.py, modeling_siglip_flux.py) on a tiny random config and saves, as
safetensors: the tiny weights (under the official module names), fixed inputs, the language model's logits in text and
in image mode, and the image tokenizer's codes and decoded features. Nothing here is fetched: place the official code
yourself, outside this repository, and never commit it.

    python3 -m venv /tmp/xomni-ref
    /tmp/xomni-ref/bin/pip install torch==2.13.0            # a CPU wheel
    /tmp/xomni-ref/bin/pip install transformers==4.51.3 einops safetensors pillow diffusers==0.34.0
    /tmp/xomni-ref/bin/pip install --no-deps timm huggingface_hub
    git clone https://github.com/matrix0721/GvU /tmp/official     # gives /tmp/official/omni_r1/models/
    /tmp/xomni-ref/bin/python tests/data/xomni_parity/make_reference.py --official /tmp/official --out tests/data/xomni_parity

X-Omni's ViT imports flash_attn, which has no CPU build, and its tokenizer module imports torchvision for a
preprocessing helper these tensors do not use: both are replaced, in this process only, by small stand-ins
(flash_attn_func as PyTorch's scaled_dot_product_attention, non-causal, at the given softmax scale). Weights are
rounded to float16 values (and stored as float16) to keep the files small; both sides compute in float32.
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import os
import sys
import tempfile
import types

import torch
import torch.nn.functional as F


def install_stand_ins() -> None:
    def flash_attn_func(q, k, v, softmax_scale=None, causal=False, **_):  # q, k, v: [B, N, H, D]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, scale=softmax_scale)
        return out.transpose(1, 2)

    def flash_attn_varlen_func(*_, **__):
        raise NotImplementedError("variable-length batches are not used for the reference tensors")

    flash = types.ModuleType("flash_attn")
    flash.flash_attn_func, flash.flash_attn_varlen_func = flash_attn_func, flash_attn_varlen_func
    flash.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    sys.modules["flash_attn"] = flash
    try:
        import torchvision  # noqa: F401
    except ImportError:
        sys.meta_path.insert(0, EmptyTorchvision())


class Placeholder(type):
    """A class whose every attribute is another placeholder class (InterpolationMode.NEAREST, ...)."""

    def __getattr__(cls, attr):
        return Placeholder.named(attr)

    @staticmethod
    def named(attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return Placeholder(attr, (), {})


class EmptyTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every `torchvision[.x]` import with an empty package whose attributes are placeholder classes:
    timm and X-Omni's tokenizer module import names from it that the reference tensors never use."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = Placeholder.named
        return module

    def exec_module(self, module):
        pass


def fp16_exact(module: torch.nn.Module, scale: float) -> None:
    """Random weights that float16 holds exactly (so the saved float16 tensors are the weights that ran)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_((torch.randn_like(p) * scale).half().float())


LM = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
          num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-6,
          tie_word_embeddings=False, num_mm_adap_layers=1, num_mm_head_layers=1, mm_vocab_size=72,
          image_vocab_size=64)
VIT = {"image_size": 64, "patch_size": 16, "width": 32, "layers": 2, "heads": 2, "mlp_ratio": 2.0,
       "global_pool": "map", "use_checkpoint": False}
PROJ = dict(z_channels=32, codebook_size=64, codebook_dim=8)  # z_channels is the ViT width: quant_conv reads the ViT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official", required=True, help="a folder holding omni_r1/models/ of matrix0721/GvU")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    # what the official code imports from these libraries, imported before the stand-ins exist (the libraries probe
    # for flash_attn and torchvision as they load)
    import diffusers.pipelines.flux.pipeline_flux  # noqa: F401
    import transformers.models.qwen2.modeling_qwen2  # noqa: F401
    install_stand_ins()
    sys.path.insert(0, args.official)
    from omni_r1.models import modeling_siglip_tokenizer as tok_mod
    from omni_r1.models import modeling_vit
    from omni_r1.models.configuration_xomni import XOmniConfig
    from omni_r1.models.modeling_xomni import XOmniForCausalLM
    from safetensors.torch import save_file

    torch.manual_seed(0)
    config = XOmniConfig(**LM)
    config._attn_implementation = "eager"
    model = XOmniForCausalLM(config).eval()
    fp16_exact(model, 0.2)
    # row 0: text then image codes then text; row 1: left padding, text, image codes
    ids = torch.tensor([[5, 17, 40, 300 + 3, 300 + 60, 300 + 7, 300 + 64, 9, 11, 12],
                        [0, 0, 0, 33, 34, 300 + 1, 300 + 2, 300 + 5, 300 + 65, 300 + 9]])
    mask = torch.tensor([[1] * 10, [0, 0, 0] + [1] * 7])
    out = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        for mode in ("text", "image"):
            model.set_generation_mode(mode)
            logits = model(input_ids=ids, attention_mask=mask).logits
            lo, hi = (0, LM["vocab_size"]) if mode == "text" else (LM["vocab_size"], LM["vocab_size"] + LM["image_vocab_size"])
            out[f"logits_{mode}"] = logits[..., lo:hi].contiguous()
    weights = {f"lm.{k}": v.half() for k, v in model.state_dict().items()}

    modeling_vit.SigLIP_MODEL_CONFIG["tiny"] = VIT  # the table create_siglip_vit reads: a tiny entry, no code change
    with tempfile.TemporaryDirectory() as tmp:
        # create_siglip_vit loads its weights from a file: make random ones in a first ViT, save, and load them
        first = modeling_vit.VisionTransformer(img_size=2048, patch_size=16, embed_dim=VIT["width"], depth=VIT["layers"],
                                               num_heads=VIT["heads"], mlp_ratio=VIT["mlp_ratio"], class_token=False,
                                               global_pool="map", num_classes=0)
        fp16_exact(first, 0.1)
        vit_path, proj_path = os.path.join(tmp, "vit.pth"), os.path.join(tmp, "proj.pth")
        torch.save(first.state_dict(), vit_path)
        proj = tok_mod.VQConvProjector(**PROJ)
        fp16_exact(proj, 0.2)
        with torch.no_grad():  # an L2-normalised codebook, as X-Omni initialises it
            proj.quantize.embedding.weight.copy_(F.normalize(proj.quantize.embedding.weight, dim=-1).half().float())
        torch.save(proj.state_dict(), proj_path)
        tokenizer = tok_mod.SiglipTokenizer("tiny", vit_path, proj_path, **PROJ).eval()
        weights.update({f"vit.{k}": v.half() for k, v in torch.load(vit_path).items()})
        weights.update({f"projector.{k}": v.half() for k, v in torch.load(proj_path).items()})
    pixels = (torch.rand(2, 3, 64, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1).half().float()
    with torch.no_grad():
        codes = tokenizer.encode(pixels)  # [2, 4, 3]
        feats = tokenizer.decode(codes, (*codes.shape, PROJ["codebook_dim"]))  # [2, z, 4, 3]
    out.update({"pixels": pixels, "codes": codes, "decoded": feats})
    os.makedirs(args.out, exist_ok=True)
    out.update(generation_reference(model))
    out.update(flux_reference(tokenizer, args.out))
    save_file({k: v.contiguous() for k, v in weights.items()}, os.path.join(args.out, "weights.safetensors"))
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(args.out, "reference.safetensors"))
    print("wrote", sorted(out), "and", len(weights), "weights to", args.out)


GENERATION_PROMPTS = ["a red cube", "two blue dogs on a mat"]


def generation_reference(model) -> dict:
    """Greedy image tokens from the official model through transformers' generate (KV cache, left padding), as X-Omni's
    generate.py and the GvU trainer call it (raw prompt + "<SOM>3 3<IMAGE>", image mode, its specials suppressed):
    without guidance for the batch, and with guidance 3 one prompt at a time against the prefix alone."""
    from transformers import GenerationConfig

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    from gvu.models.xomni.tiny import xomni_tokenizer

    tok = xomni_tokenizer(LM["image_vocab_size"])
    prefix = "<SOM>3 3<IMAGE>"
    enc = tok([p + prefix for p in GENERATION_PROMPTS], return_tensors="pt", padding="longest", padding_side="left")
    settings = dict(max_new_tokens=9, do_sample=False, pad_token_id=tok.pad_token_id,
                    suppress_tokens=tok.convert_tokens_to_ids(["<SOM>", "<EOM>", "<IMAGE>"]))
    model.set_generation_mode("image")
    with torch.no_grad():
        out = model.generate(inputs=enc.input_ids, attention_mask=enc.attention_mask, output_scores=True,
                             return_dict_in_generate=True, generation_config=GenerationConfig(**settings))
        plain = out.sequences[:, enc.input_ids.shape[1]:]
        codes = slice(LM["vocab_size"], LM["vocab_size"] + LM["image_vocab_size"])
        step_logits = torch.stack([score[:, codes] for score in out.scores], 1)  # [2, 9, 64], each step's logits
        negative = tok.encode(prefix, add_special_tokens=False, return_tensors="pt")
        guided = []
        for p in GENERATION_PROMPTS:
            ids = tok(p + prefix, return_tensors="pt").input_ids
            guided.append(model.generate(inputs=ids, generation_config=GenerationConfig(guidance_scale=3.0, **settings),
                                         negative_prompt_ids=negative)[:, ids.shape[1]:])
    return {"generation_prompt_ids": enc.input_ids, "greedy_tokens": plain - LM["vocab_size"],
            "greedy_step_logits": step_logits,
            "greedy_cfg3_tokens": torch.cat(guided) - LM["vocab_size"]}


FLUX_PROMPTS = ["a red cube", "two blue dogs"]


def flux_reference(tokenizer, out_dir: str) -> dict:
    """Run X-Omni's FluxPipelineWithSigLIP on a tiny FLUX (tiny CLIP and T5 encoders, VAE) from fixed noise; save its
    parts as gvu loads them (flux/: FLUX.1-dev's layout without a transformer; decoder/: X-Omni's transformer with
    siglip_embed) and return the inputs and the images it made."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
    from gvu.models.xomni.tiny import byte_tokenizer  # the tiny tokenizers of gvu's tests (tokenizers library only)
    from omni_r1.models.modeling_siglip_flux import FluxPipelineWithSigLIP, FluxTransformer2DModelWithSigLIP

    torch.manual_seed(2)
    transformer = FluxTransformer2DModelWithSigLIP(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4),
        siglip_channels=PROJ["z_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(8, 8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=4, shift_factor=0.1159, scaling_factor=0.3611)
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=300, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=77, projection_dim=32))
    t5 = T5EncoderModel(T5Config(vocab_size=300, d_model=32, d_ff=37, d_kv=8, num_layers=1, num_heads=4))
    for module, scale in ((transformer, 0.1), (vae, 0.1), (clip, 0.1), (t5, 0.1)):
        fp16_exact(module, scale)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    parts = dict(scheduler=scheduler, vae=vae.eval(), text_encoder=clip.eval(), tokenizer=byte_tokenizer(0, 77),
                 text_encoder_2=t5.eval(), tokenizer_2=byte_tokenizer(0, 16))
    pipe = FluxPipelineWithSigLIP(transformer=transformer.eval(), **parts)
    codes = torch.randint(0, PROJ["codebook_size"], (2, 4, 4), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        feats = tokenizer.decode(codes, (*codes.shape, PROJ["codebook_dim"])).flatten(2).transpose(1, 2)  # [2, 16, z]
    latents = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(4)).half().float()
    images = pipe(feats, FLUX_PROMPTS, negative_prompt=[""], height=32, width=32, num_inference_steps=2,
                  guidance_scale=1.0, true_cfg_scale=2.0, true_cfg_scale_2=2.0, latents=latents, output_type="pt",
                  max_sequence_length=16).images  # [2, 3, 32, 32] in [0, 1]
    FluxPipeline(transformer=None, **parts).to(torch.float16).save_pretrained(os.path.join(out_dir, "flux"))
    transformer.to(torch.float16).save_pretrained(os.path.join(out_dir, "decoder"))
    return {"flux_codes": codes, "flux_features": feats, "flux_latents": latents, "flux_images": images.float()}


if __name__ == "__main__":
    main()
