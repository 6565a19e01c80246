"""The Janus backend: transformers' JanusForConditionalGeneration behind gvu's unified-model adapter.

One backend for every size: nano-Janus (shipped in models/) and Janus-Pro 1B/7B checkpoints in transformers'
format. Model specifics live here and nowhere else: image-token logits come from the language model's hidden states
through `generation_head` (forward() applies only the text head, `lm_head`), image-token inputs are embedded by
`prepare_embeddings_for_image_generation`, and log-probs are recomputed by teacher forcing (transformers' generate()
returns only the last step's scores, and hidden states as its `logits`). docs/janus-internals.md lists what else
gvu relies on in transformers' Janus classes.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from transformers import JanusForConditionalGeneration

from gvu.config import SamplingConfig
from gvu.models.adapter import TokenLogprobs, check_image_tokens, check_prompts, rollout_row_bytes
from gvu.models.decode_engines import SampledImageTokens, draw_image_tokens
from gvu.models.janus_decode import EagerDecoder, StaticDecoder
from gvu.models.janus_format import Batch, JanusTemplate, left_pad, unconditional
from gvu.models.model_files import CheckpointError, check_safetensors, one_line, read_json_file
from gvu.sampling import guidance_scale, guide

BACKEND_FILE = "gvu_backend.json"  # optional backend defaults stored beside a checkpoint (nano-Janus has one)

# Janus-Pro's understanding system prompt: DeepSeek's VLChatProcessor.system_prompt followed by the "deepseek" SFT
# template's "\n\n" separator (transformers' JanusProcessor prepends the same string when use_default_system_prompt).
JANUS_PRO_SYSTEM_PROMPT = ("You are a helpful language and vision assistant. You are able to understand the visual "
                           "content that the user provides, and assist the user with a variety of tasks using natural "
                           "language.\n\n")
# The pad token of Janus-Pro's CFG: DeepSeek looks it up by this string (VLChatProcessor.pad_id), not through the
# tokenizer's declared pad id, which need not be this token.
JANUS_PRO_PAD_TOKEN = "<\uff5c\u2581pad\u2581\uff5c>"


@dataclass(frozen=True)
class JanusBackendConfig:
    """Model-specific numbers. Defaults are Janus-Pro's; a checkpoint directory may override them in gvu_backend.json."""

    template: JanusTemplate = field(default_factory=JanusTemplate)
    default_cfg_scale: float = 5.0  # Janus-Pro's published default
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # understanding-image normalisation (Janus-Pro: 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    text_batch_size: int = 64  # rows per teacher-forced understanding pass (memory bound)
    pad_token: str | None = None  # left padding and CFG's unconditional prompt; None: the tokenizer's pad (else EOS)
    understanding_system: str = ""  # prepended to the understanding prompt only (Janus-Pro: JANUS_PRO_SYSTEM_PROMPT)

    @staticmethod
    def janus_pro(**overrides) -> "JanusBackendConfig":
        """Janus-Pro 1B/7B as DeepSeek runs them: generation prompt without a system prompt, understanding prompt
        with the default system prompt (VLChatProcessor and transformers' converted processor both prepend it),
        CFG pad looked up by its string, CFG 5, mean = std = 0.5."""
        return JanusBackendConfig(**{"pad_token": JANUS_PRO_PAD_TOKEN, "understanding_system": JANUS_PRO_SYSTEM_PROMPT,
                                     **overrides})

    @staticmethod
    def load(model_dir: str | None, **overrides) -> "JanusBackendConfig":
        """The defaults, then model_dir's gvu_backend.json (checked: a JSON object of known keys and types; else a
        CheckpointError naming the file), then `overrides`."""
        values: dict = {}
        path = os.path.join(model_dir, BACKEND_FILE) if model_dir else None
        if path and os.path.exists(path):
            values = backend_file_values(path)
        values.update(overrides)
        if isinstance(values.get("template"), dict):
            values["template"] = JanusTemplate(**values["template"])
        for k in ("image_mean", "image_std"):
            if k in values:
                values[k] = tuple(values[k])
        return JanusBackendConfig(**values)

    def save(self, model_dir: str) -> None:
        with open(os.path.join(model_dir, BACKEND_FILE), "w") as f:
            json.dump(asdict(self), f, indent=2)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
CONVERT_HINT = ("convert it to transformers' format with transformers' src/transformers/models/janus/"
                "convert_janus_weights_to_hf.py (--local_dir IN --output_dir OUT --safe_serialization), "
                "or use the converted deepseek-community/Janus-Pro-1B or -7B")


def backend_file_values(path: str) -> dict:
    """gvu_backend.json's settings, checked against JanusBackendConfig's fields and their types."""
    fix = (f"fix it or delete it (without {BACKEND_FILE} a checkpoint gets Janus-Pro's defaults); its keys are "
           f"JanusBackendConfig's in gvu/models/janus.py")
    values = read_json_file(path, "the backend settings", fix)
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: expected a JSON object of backend settings, found a {type(values).__name__}; {fix}")
    defaults = asdict(JanusBackendConfig())
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise CheckpointError(f"{path}: unknown setting(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(sorted(defaults))}. {fix}")
    for key, value in values.items():
        want = defaults[key]
        if key == "template":
            ok = isinstance(value, dict) and set(value) <= set(want) and all(isinstance(v, str) for v in value.values())
        elif isinstance(want, tuple):
            ok = (isinstance(value, list) and len(value) == len(want)
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
        elif isinstance(want, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif key == "pad_token":
            ok = value is None or isinstance(value, str)
        else:
            ok = type(value) is type(want)
        if not ok:
            raise CheckpointError(f"{path}: {key!r} has the wrong type or shape ({str(value)[:60]!r}; the default is "
                                  f"{want!r}). {fix}")
    return values


def resolve_checkpoint(path: str) -> str:
    """A local directory as is; an "owner/name" that is not one is fetched from the hub (where the network allows)."""
    if os.path.isdir(path):
        return path
    if os.path.exists(path):
        raise CheckpointError(f"{path} is a file: give the checkpoint's directory")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", path):
        try:
            from huggingface_hub import snapshot_download
            return snapshot_download(path)
        except Exception as e:  # offline, unknown repo, gated: one message for all
            raise CheckpointError(f"{path!r} is not a local directory, and fetching it from the Hugging Face hub "
                                  f"failed ({type(e).__name__}: {e}); download it and pass the directory") from e
    raise CheckpointError(f"no checkpoint directory at {path}")


def check_checkpoint(path: str, trust_remote_code: bool = False) -> dict:
    """Check a checkpoint directory without reading weights; return its config.json. Raises CheckpointError."""
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise CheckpointError(f"{path} has no config.json: it is not a transformers checkpoint directory")
    fix = "copy the checkpoint's config.json again from where the model came from"
    cfg = read_json_file(cfg_path, "the model config", fix)
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object (a transformers model config), found a "
                              f"{type(cfg).__name__}; {fix}")
    model_type, arch = cfg.get("model_type"), cfg.get("architectures")
    found = f"model_type {model_type!r}" + (f" ({', '.join(arch)})" if arch else "")
    from transformers import CONFIG_MAPPING

    if "auto_map" in cfg or model_type not in CONFIG_MAPPING:
        what = ("DeepSeek's original Janus format, which runs the checkpoint's own code (trust_remote_code)"
                if model_type == "multi_modality" else "a config that needs custom code from the checkpoint "
                "(trust_remote_code)")
        if not trust_remote_code:
            raise CheckpointError(f"{path} holds {found}: {what}. gvu does not run code from checkpoints unless "
                                  f"asked: {CONVERT_HINT}; or, if you trust its code, pass trust_remote_code=True "
                                  "to JanusBackend.from_pretrained")
    if model_type != "janus":
        hint = CONVERT_HINT if model_type == "multi_modality" else "give a Janus / Janus-Pro checkpoint"
        raise CheckpointError(f"{path} holds {found}, not a Janus model (model_type 'janus', transformers' "
                              f"JanusForConditionalGeneration): {hint}")
    try:
        from transformers import JanusConfig

        JanusConfig(**cfg)  # the sub-configs' sizes, as from_pretrained will read them
    except Exception as e:  # transformers raises TypeError, ValueError, AttributeError ... for a malformed config
        raise CheckpointError(f"{cfg_path}: not a valid Janus config ({one_line(e)}); {fix}") from None
    _check_weights(path)
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise CheckpointError(f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}): copy the checkpoint's "
                              "tokenizer files into it")
    tok_path = os.path.join(path, "tokenizer.json")
    if os.path.exists(tok_path):
        tok = read_json_file(tok_path, "the tokenizer", "copy the checkpoint's tokenizer files into it again")
        if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
            raise CheckpointError(f"{tok_path}: not a tokenizers file (no 'model' object); copy the checkpoint's "
                                  "tokenizer files into it again")
    if os.path.exists(os.path.join(path, BACKEND_FILE)):
        backend_file_values(os.path.join(path, BACKEND_FILE))
    return cfg


def _check_weights(path: str) -> None:
    present = [f for f in WEIGHT_FILES if os.path.exists(os.path.join(path, f))]
    if not present:
        raise CheckpointError(f"{path} has no weights (looked for {', '.join(WEIGHT_FILES)})")
    for index in (f for f in present if f.endswith(".index.json")):
        fix = "copy the checkpoint's weight files again"
        weight_map = read_json_file(os.path.join(path, index), "the weights' index", fix)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{os.path.join(path, index)}: no 'weight_map' of tensor names to files; {fix}")
        shards = sorted(set(weight_map.values()))
        if any(os.path.basename(s) != s for s in shards):
            raise CheckpointError(f"{os.path.join(path, index)}: a shard name is not a file of the checkpoint; {fix}")
        missing = [s for s in shards if not os.path.exists(os.path.join(path, s))]
        if missing:
            raise CheckpointError(f"{path}: {index} lists weight shards that are missing: {', '.join(missing)}")


def load_weights(path: str, dtype: torch.dtype) -> JanusForConditionalGeneration:
    """transformers' from_pretrained, with every failure to read the weights (unreadable, damaged, tensors whose
    shapes differ from config.json's) a CheckpointError naming the folder and the fix."""
    fix = "the weights are damaged or do not belong to this config.json: copy or download the checkpoint again"
    for name in sorted(os.listdir(path)):  # truncated or garbled files fail here, in a second
        if name.endswith(".safetensors"):
            check_safetensors(os.path.join(path, name))
    try:
        model, info = JanusForConditionalGeneration.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except Exception as e:  # OSError, SafetensorError, RuntimeError (size mismatch), ValueError ...
        raise CheckpointError(f"{path}: the weights do not load ({one_line(e)}); {fix}") from None
    mismatched = info.get("mismatched_keys") or []
    if mismatched:
        first = mismatched[0]
        raise CheckpointError(f"{path}: {len(mismatched)} weight(s) have other shapes than config.json says "
                              f"(first: {first if isinstance(first, str) else first[0]}); {fix}")
    return model


def decoded_side(vq_config) -> int:
    """The side in pixels of the images a Janus VQ config decodes: its token grid times the decoder's upsampling."""
    return vq_config.num_patches * 2 ** (len(vq_config.channel_multiplier) - 1)


def decoded_image_size(config: dict) -> int:
    """decoded_side from a checkpoint's config.json (as check_checkpoint returns it), before any weights load."""
    from transformers import JanusConfig

    try:
        return decoded_side(JanusConfig(**{k: v for k, v in config.items()
                                           if k in ("vq_config", "vision_config", "text_config")}).vq_config)
    except Exception as e:  # a malformed sub-config (transformers raises several kinds)
        raise CheckpointError(f"config.json: its vq_config gives no image size ({one_line(e)})") from None


def special_token_ids(tokenizer, config: "JanusBackendConfig") -> dict[str, int]:
    """Ids of Janus's special tokens in `tokenizer`: image, boi, eoi, bos, pad. Raises ValueError naming a missing one."""
    t = config.template
    ids = {}
    for name, token in {"image": t.image_token, "boi": t.boi_token, "eoi": t.eoi_token}.items():
        ids[name] = _token_id(tokenizer, token, f"it is not a Janus tokenizer (Janus needs {t.image_token}, "
                                                f"{t.boi_token} and {t.eoi_token})")
    if tokenizer.bos_token_id is None:
        raise ValueError("the tokenizer has no BOS token: Janus prompts start with BOS, and CFG's unconditional "
                         "prompt keeps it")
    ids["bos"] = tokenizer.bos_token_id
    if config.pad_token is not None:
        ids["pad"] = _token_id(tokenizer, config.pad_token, "set the backend's pad_token to a token it has")
    else:
        ids["pad"] = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if ids["pad"] in (ids["bos"], ids["boi"]):
        raise ValueError(f"the pad id {ids['pad']} equals BOS or {t.boi_token}: CFG's unconditional prompt needs a "
                         "distinct pad token")
    return ids


def _token_id(tokenizer, token: str, why: str) -> int:
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or (i == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(f"the tokenizer has no {token!r} token: {why}")
    return i


def janus_pro_defaults(path: str, tokenizer) -> dict:
    """Backend settings for a checkpoint without gvu_backend.json (a real Janus-Pro): the CFG pad by its string,
    and the understanding system prompt when the checkpoint declares use_default_system_prompt (DeepSeek's
    tokenizer_config.json and transformers' converted processor_config.json both do)."""
    values: dict = {}
    if tokenizer.convert_tokens_to_ids(JANUS_PRO_PAD_TOKEN) not in (None, tokenizer.unk_token_id):
        values["pad_token"] = JANUS_PRO_PAD_TOKEN
    for name in ("processor_config.json", "tokenizer_config.json"):
        p = os.path.join(path, name)
        if os.path.exists(p):
            with open(p) as f:
                if json.load(f).get("use_default_system_prompt"):
                    values["understanding_system"] = JANUS_PRO_SYSTEM_PROMPT
    return values


def image_token_logits(model: JanusForConditionalGeneration, prompt: Batch, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced generation logits.

    prompt: left-padded prompt batch [M, T] ending in <begin_of_image>; tokens: image tokens [M, N].
    Returns logits [M, N, V_img]: row j predicts tokens[:, j] from the prompt and tokens[:, :j].
    """
    m, n = tokens.shape
    text = model.get_input_embeddings()(prompt.ids)
    image = model.prepare_embeddings_for_image_generation(tokens[:, :-1])
    embeds = torch.cat([text, image.to(text.dtype)], dim=1)
    mask = torch.cat([prompt.mask, torch.ones(m, n - 1, dtype=prompt.mask.dtype, device=prompt.mask.device)], 1)
    last = prompt.positions[:, -1:]
    positions = torch.cat([prompt.positions, last + torch.arange(1, n, device=last.device)], dim=1)
    # use_cache=False: a teacher-forced pass needs no KV cache (at Janus-Pro sizes it would hold GBs)
    hidden = model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                        use_cache=False).last_hidden_state
    return model.model.generation_head(hidden[:, -n:])


def text_logits(model: JanusForConditionalGeneration, batch: Batch, pixel_values: torch.Tensor | None,
                image_index: torch.Tensor | None = None) -> torch.Tensor:
    """Understanding-branch logits [M, T, V_text] for ids holding N image placeholders per row, with the images
    pixel_values [M, 3, H, W] (normalised as the image processor does).

    image_index [M] (optional): row i reads image pixel_values[image_index[i]] of U <= M images, so rows that share
    an image (pretraining's ranking rows: one image, several captions) run the vision encoder once. The same math as
    passing every row its own copy: a shared image's features get the sum of its rows' gradients either way."""
    if image_index is None:
        out = model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.positions, pixel_values=pixel_values)
        return out.logits
    embeds = model.get_input_embeddings()(batch.ids)
    try:  # as transformers' own forward asks for it
        feats = model.model.get_image_features(pixel_values=pixel_values, return_dict=True)
    except TypeError:  # a version whose get_image_features takes no return_dict
        feats = model.model.get_image_features(pixel_values=pixel_values)
    feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output  # a tensor in older transformers
    # to the embeddings' dtype (fp32 under autocast) before the rows are gathered, so that a shared image's
    # gradient is summed over its rows in that precision
    feats = feats.to(embeds.device, embeds.dtype)[image_index.to(embeds.device)].reshape(-1, embeds.shape[-1])
    mask = (batch.ids == model.config.image_token_id)[..., None].expand_as(embeds)
    if int(mask.sum()) != feats.numel():
        raise ValueError(f"{int(mask.sum()) // embeds.shape[-1]} image placeholders but {feats.shape[0]} image features")
    embeds = embeds.masked_scatter(mask, feats)
    return model(inputs_embeds=embeds, attention_mask=batch.mask, position_ids=batch.positions).logits


class JanusBackend:
    """UnifiedModel for transformers' Janus classes. Device and dtype come from the model you pass in."""

    def __init__(self, model: JanusForConditionalGeneration, tokenizer, config: JanusBackendConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config or JanusBackendConfig()
        self.ids = special_token_ids(tokenizer, self.config)
        image_token_id = getattr(model.config, "image_token_id", None)
        if image_token_id is not None and image_token_id != self.ids["image"]:
            raise ValueError(f"the model's image_token_id is {image_token_id} but the tokenizer's "
                             f"{self.config.template.image_token} is {self.ids['image']}: tokenizer and model do not match")
        vcfg, qcfg = model.config.vision_config, model.config.vq_config
        self.num_image_tokens = vcfg.num_image_tokens
        self.image_vocab_size = qcfg.num_embeddings
        self.image_size = decoded_side(qcfg)  # decoded pixels per side
        self.vision_size = vcfg.image_size  # what the understanding encoder reads
        self.default_cfg_scale = self.config.default_cfg_scale
        self.max_positions = model.config.text_config.max_position_embeddings
        lm = model.model.language_model
        self._cache_kw = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        self._und_prefix: dict[str, list[int]] = {}

    @staticmethod
    def from_pretrained(path: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                        trust_remote_code: bool = False, **overrides) -> "JanusBackend":
        """Load a Janus checkpoint in transformers' format: a local directory (or a hub id where the network allows).

        Files, model type and tokenizer are checked before any weight is read (check_checkpoint). Backend settings:
        the directory's gvu_backend.json if it has one (nano-Janus), else Janus-Pro's defaults as the checkpoint
        declares them (janus_pro_defaults), then `overrides`. trust_remote_code only lets the tokenizer run
        custom code from the checkpoint; the model is always transformers' own JanusForConditionalGeneration."""
        from transformers import AutoTokenizer

        path = resolve_checkpoint(path)
        check_checkpoint(path, trust_remote_code)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as e:  # tokenizers and transformers raise many kinds for damaged files
            raise CheckpointError(f"{path}: its tokenizer ({', '.join(TOKENIZER_FILES)}, tokenizer_config.json) does not "
                                  f"load ({one_line(e)}); copy the checkpoint's tokenizer files "
                                  "into it again") from None
        defaults = {} if os.path.exists(os.path.join(path, BACKEND_FILE)) else janus_pro_defaults(path, tokenizer)
        config = JanusBackendConfig.load(path, **{**defaults, **overrides})
        try:  # a tokenizer without Janus's tokens fails here, before the weights load
            special_token_ids(tokenizer, config)
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
        model = load_weights(path, dtype).to(device).eval()
        return JanusBackend(model, tokenizer, config)

    @contextlib.contextmanager
    def checkpointed(self):
        """Gradient checkpointing of the language model inside the block: keep only each layer's input and
        recompute the rest in backward (for the update's teacher-forced passes on Janus-Pro-sized models).
        transformers checkpoints only in train mode, where it also turns the KV cache off, so never sample inside."""
        lm = self.model.model.language_model
        was_training = lm.training
        kwargs = {"use_reentrant": False}  # no need for inputs that require grad (LoRA leaves them frozen)
        if hasattr(lm, "activation_checkpointing_enable"):  # the newer transformers 5.x name
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            disable = lm.activation_checkpointing_disable
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
            disable = lm.gradient_checkpointing_disable
        lm.train()  # dropout is 0 in Janus's language model: train mode changes nothing else
        try:
            yield
        finally:
            lm.train(was_training)
            disable()
            lm.disable_input_require_grads()  # enable() hooks the embeddings each time; without this they pile up

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------------------------------ text layout
    def _with_bos(self, ids: list[int]) -> list[int]:
        # Janus prompts start with BOS (DeepSeek's tokenizer adds it); CFG's unconditional prompt keeps it
        return ids if ids and ids[0] == self.ids["bos"] else [self.ids["bos"], *ids]

    def prompt_ids(self, prompt: str) -> list[int]:
        return self._with_bos(self.tokenizer(self.config.template.generation(prompt)).input_ids)

    def prompt_batch(self, prompts: list[str]) -> Batch:
        b = left_pad([self.prompt_ids(p) for p in prompts], self.ids["pad"])
        return Batch(b.ids.to(self.device), b.mask.to(self.device), b.positions.to(self.device))

    def answer_ids(self, text: str) -> list[int]:
        return self.tokenizer(" " + text, add_special_tokens=False).input_ids

    def check_prompts(self, prompts: list[str]) -> None:
        check_prompts(prompts, lambda p: len(self.prompt_ids(p)), self.num_image_tokens, self.max_positions)

    def check_tokens(self, tokens: torch.Tensor) -> None:
        check_image_tokens(tokens, self.num_image_tokens, self.image_vocab_size)

    def rollout_bytes_per_row(self, sampling: SamplingConfig, prompts: list[str]) -> int:
        """The language model's KV cache over the longest prompt + N, the generation head's logits, the pixels and
        the VQ decoder's full-resolution maps (base_channels x the first channel multiplier), in the model's dtype."""
        tc, vq = self.model.config.text_config, self.model.config.vq_config
        heads = tc.num_attention_heads
        return rollout_row_bytes(
            layers=tc.num_hidden_layers, kv_heads=getattr(tc, "num_key_value_heads", None) or heads,
            head_dim=getattr(tc, "head_dim", None) or tc.hidden_size // heads,
            positions=max(len(self.prompt_ids(p)) for p in prompts) + self.num_image_tokens,
            weight_bytes=self.model.dtype.itemsize, guided=sampling.guidance, vocab=self.image_vocab_size,
            image_size=self.image_size, decoder_channels=vq.base_channels * vq.channel_multiplier[0])

    # ------------------------------------------------------------------------------------------ generation
    def _lm_step(self, embeds, mask, positions, cache):
        out = self.model.model.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                                              use_cache=True, **{self._cache_kw: cache})
        return out.last_hidden_state[:, -1]

    @torch.no_grad()
    def sample_image_tokens(self, prompts: list[str], sampling: SamplingConfig,
                            row_ids: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [M, N]. With guidance the batch is [conditional rows; unconditional rows] (transformers' layout);
        without (sampling.guidance False) only the conditional rows. A KV cache either way; sampling.engine picks
        how the decoding steps run (gvu.models.janus_decode): in float32 every engine draws the same tokens.

        row_ids [M]: each row's global id (default 0..M-1); a row's random draws depend only on (seed, row id,
        position), not on its batch (gvu.sampling.row_uniforms)."""
        return self.sample_image_tokens_with_logprobs(prompts, sampling, row_ids, with_logprobs=False).tokens

    @torch.no_grad()
    def sample_image_tokens_with_logprobs(self, prompts: list[str], sampling: SamplingConfig,
                                          row_ids: torch.Tensor | None = None,
                                          with_logprobs: bool = True) -> SampledImageTokens:
        """sample_image_tokens, plus the log-probability [M, N] of each drawn token under the distribution it was
        drawn from (guided, tempered and filtered); None when with_logprobs is False."""
        sampling.validate()
        self.check_prompts(prompts)
        scale = guidance_scale(sampling, self.default_cfg_scale, "for no guidance set sampling.guidance to false")
        m = len(prompts)
        cond = self.prompt_batch(prompts)
        if sampling.guidance:
            uncond = unconditional(cond.ids, cond.mask, self.ids["bos"], self.ids["boi"], self.ids["pad"])
            cond = Batch(torch.cat([cond.ids, uncond]), torch.cat([cond.mask, cond.mask]),
                         torch.cat([cond.positions, cond.positions]))
        rows = torch.arange(m) if row_ids is None else torch.as_tensor(row_ids)
        return draw_image_tokens(self, cond, m, sampling, scale, rows, with_logprobs, EagerDecoder, StaticDecoder)

    def image_token_logprobs(self, prompts: list[str], tokens: torch.Tensor, temperature: float = 1.0,
                             guidance: float | None = None) -> torch.Tensor:
        """log p(tokens | prompt) [M, N], differentiable, at the sampling temperature.

        guidance None: the conditional branch's log-probs (the default policy that GRPO optimises; sampling adds
        guidance on top of it, so the ratio at the first inner step is exp(0) only up to that difference, as in the
        official GvU code, which trains the conditional branch with CFG off).
        guidance s: the log-probs of the guided distribution softmax((u + s (c - u)) / T) that sampling draws
        from (before any top-k / top-p / min-p filter): the conditional and unconditional rows share one pass, so
        the gradient reaches the unconditional branch too, with weight -(s - 1)."""
        self.check_tokens(tokens)
        tokens = tokens.to(self.device)
        cond = self.prompt_batch(prompts)
        if guidance is None:
            logits = image_token_logits(self.model, cond, tokens)
        else:
            uncond = unconditional(cond.ids, cond.mask, self.ids["bos"], self.ids["boi"], self.ids["pad"])
            both = Batch(torch.cat([cond.ids, uncond]), torch.cat([cond.mask, cond.mask]),
                         torch.cat([cond.positions, cond.positions]))
            logits = image_token_logits(self.model, both, tokens.repeat(2, 1)).float()
            logits = guide(logits[: len(prompts)], logits[len(prompts):], guidance)
        logp = F.log_softmax(logits.float() / temperature, dim=-1)
        return logp.gather(-1, tokens[..., None]).squeeze(-1)

    @torch.no_grad()
    def decode_images(self, tokens: torch.Tensor, prompts: list[str] | None = None,
                      seeds: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [M, N] -> pixels [M, 3, H, W]; Janus's VQ decoder is deterministic and reads no prompt."""
        self.check_tokens(tokens)
        return self.model.model.vqmodel.decode(tokens.to(self.device)).float().clamp(-1, 1)

    # ------------------------------------------------------------------------------------------ understanding
    def _understanding_prefix(self, query: str) -> list[int]:
        if query not in self._und_prefix:
            text = self.config.understanding_system + self.config.template.understanding(query, self.num_image_tokens)
            self._und_prefix[query] = self._with_bos(self.tokenizer(text).input_ids)
        return self._und_prefix[query]

    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels [M, 3, H, W] -> the understanding encoder's input (resized, normalised)."""
        if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[2] != pixels.shape[3]:
            raise ValueError(f"images must be [M, 3, S, S] in [-1, 1], got {tuple(pixels.shape)}")
        if pixels.shape[-1] != self.image_size:
            raise ValueError(f"images must be {self.image_size}x{self.image_size} (what this model decodes), "
                             f"got {pixels.shape[-1]}x{pixels.shape[-2]}")
        x = (pixels.float().clamp(-1, 1) + 1) / 2
        if x.shape[-1] != self.vision_size:
            x = F.interpolate(x, size=(self.vision_size, self.vision_size), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(self.config.image_mean, device=x.device)[None, :, None, None]
        std = torch.tensor(self.config.image_std, device=x.device)[None, :, None, None]
        return ((x - mean) / std).to(self.model.dtype)

    def check_texts(self, query: str, texts: list[str]) -> list[list[int]]:
        """The answer ids of texts to score after the image and query; an empty text, or one that with the image
        and query needs more positions than the model has, is an error. Returns the ids."""
        answers = [self.answer_ids(t) for t in texts]
        prefix = len(self._understanding_prefix(query))
        for t, a in zip(texts, answers):
            if not a or not t.strip():
                raise ValueError(f"cannot score an empty text ({t!r})")
            if prefix + len(a) > self.max_positions:
                raise ValueError(f"text {t[:60]!r}... needs {prefix + len(a)} positions after the image and query; "
                                 f"the model has {self.max_positions}. Shorten it.")
        return answers

    def text_logprobs(self, pixels: torch.Tensor, query: str, texts: list[str]) -> TokenLogprobs:
        """One teacher-forced pass per `text_batch_size` rows: log p(text_j | image, query, text_<j) [M, L]."""
        if len(texts) != pixels.shape[0]:
            raise ValueError(f"{pixels.shape[0]} images but {len(texts)} texts")
        answers = self.check_texts(query, texts)
        pv = self.pixel_values(pixels.to(self.device))
        width = max(len(a) for a in answers)
        lps = torch.zeros(len(texts), width, device=self.device)
        mask = torch.zeros(len(texts), width, dtype=torch.bool, device=self.device)
        ids_out = torch.full((len(texts), width), self.ids["pad"], dtype=torch.long, device=self.device)
        prefix = self._understanding_prefix(query)
        bs = self.config.text_batch_size
        for s in range(0, len(texts), bs):
            chunk = answers[s:s + bs]
            batch = left_pad([prefix + a for a in chunk], self.ids["pad"])
            batch = Batch(batch.ids.to(self.device), batch.mask.to(self.device), batch.positions.to(self.device))
            w = max(len(a) for a in chunk)
            hidden = self.model.model(input_ids=batch.ids, attention_mask=batch.mask, position_ids=batch.positions,
                                      pixel_values=pv[s:s + bs], use_cache=False).last_hidden_state
            # only the last w + 1 columns matter: column t predicts token t + 1 (saves the full [M, T, V] logits)
            logits = self.model.lm_head(hidden[:, -w - 1:-1]).float()
            target = batch.ids[:, -w:]
            lp = F.log_softmax(logits, dim=-1).gather(-1, target[..., None]).squeeze(-1)  # [m, w], right-aligned
            for r, a in enumerate(chunk):
                k = len(a)
                lps[s + r, :k] = lp[r, w - k:]
                mask[s + r, :k] = True
                ids_out[s + r, :k] = target[r, w - k:]
        return TokenLogprobs(lps, mask, ids_out)
