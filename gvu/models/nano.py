"""nano-Janus: transformers' Janus architecture at a size a laptop CPU trains in under two hours.

The model is `JanusForConditionalGeneration` itself (the class that loads Janus-Pro checkpoints), so rollout,
reward and training run one code path for the nano model and for real checkpoints. This file holds only what
is nano-specific: the sizes (NanoSpec presets), the offline-built BPE tokenizer with Janus's special tokens,
and the processor. Pretraining lives in gvu/models/pretrain/.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import JanusConfig, JanusProcessor, PreTrainedTokenizerFast

# Janus-Pro's special tokens (same strings, so the chat template and guidance code are shared).
BOS, EOS, PAD = "<|begin▁of▁sentence|>", "<|end▁of▁sentence|>", "<｜▁pad▁｜>"
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IMAGE, BOI, EOI, USER, ASSISTANT]


@dataclass(frozen=True)
class NanoSpec:
    """Sizes of a nano-Janus. Two constraints of transformers' Janus classes:
    - the VQ downsample 2**(len(mult)-1) equals the vision patch size: JanusConfig sets the VQ's num_patches from
      the vision encoder's image_size // patch_size, and generation makes vision_config.num_image_tokens tokens, so
      the VQ's token grid and the vision encoder's patch grid must be one grid (patch_size below is that downsample);
    - base_channels * every multiplier is divisible by 32: the VQ's GroupNorm uses 32 groups."""

    image_size: int = 64
    vq_base_channels: int = 32
    vq_channel_multiplier: tuple[int, ...] = (1, 1, 2, 2)  # downsample 8: 8x8 = 64 image tokens
    vq_res_blocks: int = 1
    vq_embed_dim: int = 8
    vq_codebook: int = 512
    vision_hidden: int = 192
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_intermediate: int = 768
    max_positions: int = 256
    vocab_size: int = 512  # BPE vocabulary including the special tokens

    @property
    def patch_size(self) -> int:
        return 2 ** (len(self.vq_channel_multiplier) - 1)

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SPECS = {
    "nano": NanoSpec(),
    # the same with a 6-layer language model (issue 3's experiment on whether depth lets captions bind spatial
    # relations; 34 MB of fp32 safetensors against nano's 27)
    "nano-deep": NanoSpec(text_layers=6),
    # tiny, for tests: trains in well under two minutes and exercises every code path
    "smoke": NanoSpec(vq_base_channels=32, vq_codebook=64, vision_hidden=32, vision_layers=1, vision_heads=2,
                      text_hidden=64, text_layers=2, text_heads=2, text_intermediate=128, vocab_size=320),
}


def corpus(n_scenes: int = 3000, seed: int = 0) -> list[str]:
    """Every kind of text the model reads or writes: prompts of all suites and splits, captions, questions."""
    from gvu.world.captions import CAPTION_STYLES, REWARD_QUERY, describe, questions
    from gvu.world.prompts import make_prompt
    from gvu.world.sampler import sample_scene
    from gvu.world.vocab import SUITES

    rng = random.Random(seed)
    texts = [REWARD_QUERY]
    for i in range(n_scenes):
        suite = rng.choice(list(SUITES))
        m = make_prompt(suite, rng.choice(SUITES[suite]), rng)
        texts.append(m["prompt"])
        scene = sample_scene(m, rng)
        texts += [describe(scene, rng, s) for s in CAPTION_STYLES]
        texts += [f"{q} {a}" for _, q, a in questions(scene, rng, 2)]
    return texts


def build_tokenizer(spec: NanoSpec, texts: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained offline on the world's texts, with Janus's special tokens; adds BOS like Janus-Pro's."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, tok.token_to_id(BOS))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left",
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI})


def build_processor(spec: NanoSpec, tokenizer) -> JanusProcessor:
    try:  # the PIL backend needs no torchvision (whose wheel breaks beside the CPU torch used here)
        from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers
        from transformers import JanusImageProcessor as ImageProcessor
    # mean = std = 0.5 (the default is CLIP's), so that pixels in [-1, 1] handed straight to the understanding
    # encoder (the VQ's decoded images) equal what the processor makes of the same image as a PIL picture
    image_processor = ImageProcessor(size={"height": spec.image_size, "width": spec.image_size},
                                             image_mean=[0.5] * 3, image_std=[0.5] * 3, min_size=spec.image_size)
    return JanusProcessor(image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=spec.num_image_tokens)


def vq_sizes(spec: NanoSpec) -> dict:
    """The VQ tokenizer's own sizes (JanusVQVAEConfig fields): two specs with equal ones can share a VQ."""
    return dict(embed_dim=spec.vq_embed_dim, num_embeddings=spec.vq_codebook, base_channels=spec.vq_base_channels,
                channel_multiplier=list(spec.vq_channel_multiplier), num_res_blocks=spec.vq_res_blocks,
                latent_channels=spec.vq_base_channels * spec.vq_channel_multiplier[-1])


def build_config(spec: NanoSpec, tokenizer) -> JanusConfig:
    vocab = len(tokenizer)
    text = dict(model_type="llama", vocab_size=vocab, hidden_size=spec.text_hidden,
                intermediate_size=spec.text_intermediate, num_hidden_layers=spec.text_layers,
                num_attention_heads=spec.text_heads, num_key_value_heads=spec.text_heads,
                max_position_embeddings=spec.max_positions, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    vision = dict(hidden_size=spec.vision_hidden, num_hidden_layers=spec.vision_layers,
                  num_attention_heads=spec.vision_heads, image_size=spec.image_size, patch_size=spec.patch_size,
                  projection_dim=spec.text_hidden, num_image_tokens=spec.num_image_tokens, depth=2)
    vq = dict(vq_sizes(spec), projection_dim=spec.text_hidden, image_token_embed_dim=spec.text_hidden,
              num_hidden_layers=2)
    cfg = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                      image_token_id=tokenizer.convert_tokens_to_ids(IMAGE))
    cfg.nano_spec = asdict(spec)
    return cfg


def build_random(spec: str | NanoSpec = "smoke", seed: int = 0, n_scenes: int = 300):
    """An untrained nano-Janus (random weights) and its tokenizer: for tests and speed benchmarks, no download."""
    import torch
    from transformers import JanusForConditionalGeneration

    spec = SPECS[spec] if isinstance(spec, str) else spec
    tok = build_tokenizer(spec, corpus(n_scenes, seed))
    torch.manual_seed(seed)
    model = JanusForConditionalGeneration(build_config(spec, tok)).eval()
    return model, tok
