"""Janus-Pro 1B / 7B: the facts gvu relies on, and random look-alikes built offline (tests, GPU sizing).

Read from (never copied): transformers' Janus classes and convert_janus_weights_to_hf.py, DeepSeek's Janus repo
(VLChatProcessor, generation_inference.py), and the published config.json / special_tokens_map.json /
tokenizer_config.json of deepseek-ai/Janus-Pro-1B and -7B.

  text (Llama)    1B: hidden 2048, intermediate 5632, 24 layers, 16 heads      7B: 4096, 11008, 30 layers, 32 heads
                  both: vocab 102400, max positions 16384, MHA (kv heads = heads), untied lm_head
  understanding   SigLIP-L (hidden 1024, 24 layers), 384 px, patch 16 -> 576 image embeddings per image
  generation      VQ-16: codebook 16384 x 8, downsample 16 -> 24 x 24 = 576 tokens for a 384 px image
  tokens          BOS <｜begin▁of▁sentence｜> 100000, EOS <｜end▁of▁sentence｜> 100001, CFG pad <｜▁pad▁｜> 100015,
                  <begin_of_image> 100016, <image_placeholder> 100581 (transformers' JanusConfig default), CFG 5
  prompts         generation:    BOS "<|User|>: {prompt}\\n\\n<|Assistant|>:" <begin_of_image>   (no system prompt)
                  understanding: BOS "{system}<|User|>: " <begin_of_image> <image_placeholder> x 576 <end_of_image>
                                 "\\n{query}\\n\\n<|Assistant|>:"   (system = JANUS_PRO_SYSTEM_PROMPT)
Not confirmed offline: the ids of <end_of_image>, <|User|> and <|Assistant|> (the look-alike places them at the
ids below), and how the 1B and 7B tokenizers differ. What matters to gvu and is handled: the tokenizer's *declared*
pad id need not be <｜▁pad▁｜> (a Janus-Pro-1B tokenizer was reported left-padding with 100002), so the backend
looks the CFG pad up by its string, as DeepSeek's VLChatProcessor.pad_id does; and BOS is prepended if a tokenizer
does not add it. The look-alike tokenizers cover both declared pads ("1b": 100002, "7b": 100015).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gvu.models.janus import JANUS_PRO_PAD_TOKEN

BOS, EOS = "<\uff5cbegin\u2581of\u2581sentence\uff5c>", "<\uff5cend\u2581of\u2581sentence\uff5c>"
PAD = JANUS_PRO_PAD_TOKEN
IMAGE, BOI, EOI = "<image_placeholder>", "<begin_of_image>", "<end_of_image>"
USER, ASSISTANT = "<|User|>", "<|Assistant|>"
FIM_HOLE = "<\uff5cfim\u2581hole\uff5c>"  # what id 100002 holds in DeepSeek-LLM's vocabulary
TOKEN_IDS = {BOS: 100000, EOS: 100001, FIM_HOLE: 100002, PAD: 100015, BOI: 100016, IMAGE: 100581,
             EOI: 100582, USER: 100588, ASSISTANT: 100589}  # the last three: placement of the look-alike only
DECLARED_PAD = {"1b": FIM_HOLE, "7b": PAD}  # the tokenizer's pad_token in each look-alike variant


@dataclass(frozen=True)
class JanusProSpec:
    """Sizes of a Janus-Pro-shaped model. Defaults are Janus-Pro-1B's; vision and VQ defaults are transformers'
    JanusVisionConfig / JanusVQVAEConfig defaults, which the conversion script keeps for Janus-Pro."""

    text_hidden: int = 2048
    text_intermediate: int = 5632
    text_layers: int = 24
    text_heads: int = 16
    vocab_size: int = 102400
    max_positions: int = 16384
    image_size: int = 384
    patch_size: int = 16
    vision_hidden: int = 1024
    vision_layers: int = 24
    vision_heads: int = 16
    vq_codebook: int = 16384
    vq_embed_dim: int = 8
    vq_base_channels: int = 128
    vq_channel_multiplier: tuple[int, ...] = (1, 1, 2, 2, 4)  # downsample 2**4 = 16 = patch_size
    vq_res_blocks: int = 2
    vq_latent_channels: int = 256

    @property
    def num_image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


SPECS = {
    "1b": JanusProSpec(),
    "7b": JanusProSpec(text_hidden=4096, text_intermediate=11008, text_layers=30, text_heads=32),
    # same vocabulary, token ids, codebook, patch 16 and VQ depth as Janus-Pro; tiny widths and 64 px (16 tokens)
    "tiny": JanusProSpec(text_hidden=64, text_intermediate=128, text_layers=2, text_heads=4, image_size=64,
                         vision_hidden=32, vision_layers=1, vision_heads=2, vq_base_channels=32, vq_res_blocks=1,
                         vq_latent_channels=128),
}


def build_tokenizer(variant: str = "1b", vocab_size: int = 102400, add_bos: bool = True, texts: list[str] | None = None):
    """A byte-level BPE look-alike of Janus-Pro's tokenizer, built offline: a small learned vocabulary, reserved
    fillers, and Janus-Pro's special tokens at Janus-Pro's ids; len(tokenizer) == vocab_size.

    variant picks the declared pad token (see DECLARED_PAD); add_bos=False gives a tokenizer that does not add BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if variant not in DECLARED_PAD:
        raise ValueError(f"variant must be one of {sorted(DECLARED_PAD)} (got {variant!r})")
    if vocab_size <= max(TOKEN_IDS.values()):
        raise ValueError(f"vocab_size must exceed {max(TOKEN_IDS.values())} to hold Janus-Pro's token ids")
    learner = Tokenizer(models.BPE())
    learner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    learner.train_from_iterator(texts or _default_texts(), trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    learned = json.loads(learner.to_str())["model"]
    fixed = {i: t for t, i in TOKEN_IDS.items()}
    vocab = {t: i for t, i in learned["vocab"].items()}
    for i in range(len(vocab), vocab_size):
        vocab[fixed.get(i, f"<|reserved_{i}|>")] = i
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(TOKEN_IDS))  # already in the vocabulary: they keep their ids
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                           special_tokens=[(BOS, TOKEN_IDS[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=DECLARED_PAD[variant], padding_side="left",
        extra_special_tokens={"image_token": IMAGE, "boi_token": BOI, "eoi_token": EOI})


def _default_texts() -> list[str]:
    from gvu.models.nano import corpus

    return corpus(n_scenes=200, seed=0) + ["Describe the image in detail.", "a photo of a cat"]


def build_config(spec: str | JanusProSpec = "1b", tokenizer=None):
    """transformers' JanusConfig for a spec, laid out as the conversion script lays out Janus-Pro's."""
    from transformers import JanusConfig

    spec = SPECS[spec] if isinstance(spec, str) else spec
    pad = TOKEN_IDS[PAD] if tokenizer is None else tokenizer.pad_token_id
    text = dict(model_type="llama", vocab_size=spec.vocab_size, hidden_size=spec.text_hidden,
                intermediate_size=spec.text_intermediate, num_hidden_layers=spec.text_layers,
                num_attention_heads=spec.text_heads, num_key_value_heads=spec.text_heads, hidden_act="silu",
                max_position_embeddings=spec.max_positions, bos_token_id=TOKEN_IDS[BOS], eos_token_id=TOKEN_IDS[EOS],
                pad_token_id=pad)
    vision = dict(hidden_size=spec.vision_hidden, num_hidden_layers=spec.vision_layers,
                  num_attention_heads=spec.vision_heads, image_size=spec.image_size, patch_size=spec.patch_size,
                  projection_dim=spec.text_hidden, depth=2, num_image_tokens=spec.num_image_tokens)
    vq = dict(embed_dim=spec.vq_embed_dim, num_embeddings=spec.vq_codebook, base_channels=spec.vq_base_channels,
              channel_multiplier=list(spec.vq_channel_multiplier), num_res_blocks=spec.vq_res_blocks,
              latent_channels=spec.vq_latent_channels, projection_dim=spec.text_hidden,
              image_token_embed_dim=spec.text_hidden, num_hidden_layers=2)
    # Janus-Pro's lm_head is its own matrix (DeepSeek-LLM's): 2.09B / 7.42B parameters, as the checkpoints' sizes show
    return JanusConfig(text_config=text, vision_config=vision, vq_config=vq, image_token_id=TOKEN_IDS[IMAGE],
                       tie_word_embeddings=False)


def build_random(spec: str | JanusProSpec = "tiny", variant: str = "1b", seed: int = 0, add_bos: bool = True,
                 device: str = "cpu", dtype=None):
    """A Janus-Pro-shaped JanusForConditionalGeneration with random weights and its look-alike tokenizer."""
    import torch
    from transformers import JanusForConditionalGeneration

    tok = build_tokenizer(variant, (SPECS[spec] if isinstance(spec, str) else spec).vocab_size, add_bos)
    torch.manual_seed(seed)
    with torch.device(device):
        model = JanusForConditionalGeneration._from_config(build_config(spec, tok), dtype=dtype or torch.float32)
    return model.eval(), tok
