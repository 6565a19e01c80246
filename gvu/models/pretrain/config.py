"""A pretraining recipe (PretrainConfig) and its checks. Its defaults are the shipped model's recipe; presets are JSON
files of changes to them (gvu.models.pretrain.presets)."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, fields

import torch

from gvu.config import ConfigError
from gvu.models import nano
from gvu.models.pretrain.data import SPATIAL_TAGS


@dataclass(frozen=True)
class PretrainConfig:
    """A pretraining recipe; the defaults make the shipped model (models/nano-janus, with its stage 1 and 1c taken
    from an earlier run through vq_from). Stages: 1 VQ tokenizer, 1c VQ decoder alone, 1b understanding encoder
    alone, 2 language model, 3 stage 2 continued on VQ reconstructions (see gvu/models/pretrain/__init__.py)."""

    spec: str = "nano"  # model sizes, a key of gvu.models.nano.SPECS
    device: str = "cpu"  # "cuda" trains on a GPU (data are still made on the CPU)
    seed: int = 0  # 0 .. 2**32 - 1
    threads: int = 2  # torch CPU threads
    # bf16 autocast where this machine computes bf16 natively (use_bf16): a CUDA GPU with bf16, a CPU with AVX512-BF16
    # or AMX. On other CPUs (AVX2 only) the stages run in fp32, since torch emulates bf16 matrix products there and is
    # many times slower (benchmarks/precision_speed.py)
    bf16: bool = True
    # stages 1 and 1c: the VQ's group norms compute in fp32 under bf16 autocast (vq_train.FP32GroupNorm), which makes
    # VQ steps 1.5x faster on the CPU; False keeps torch's bf16 group norm
    vq_norm_fp32: bool = True
    # torch.compile the VQ's encoder and decoder (stages 1 and 1c) and the language model (stages 2 and 3), on the CPU
    # only (GPU stages run eagerly: compiled stages were checked on the CPU only). On a 2-core CPU a step of stage 1
    # takes 0.41 s instead of 0.63, of 1c 0.34 instead of 0.47, of 2 1.10 instead of 1.20
    # (benchmarks/pretrain_speed.py). Where torch cannot compile (no C++ compiler), the stages run eagerly and say so
    torch_compile: bool = True
    save_every: int = 200  # steps between checkpoints
    # stage 1: VQ
    vq_steps: int = 4000
    vq_batch: int = 32
    vq_lr: float = 1e-3
    vq_restart_every: int = 50  # restart codes unused over this many steps
    vq_fg_weight: float = 10.0  # weight of object pixels against background in the reconstruction loss
    vq_edge_weight: float = 1.0  # weight of the image-gradient (edge) loss
    # stage 1 on object-centred crops (0: whole images): a step trains on vq_crop_batch crops of vq_crop x vq_crop
    # pixels, each around a random object of its scene, except every vq_full_every-th step (0: none), which trains on
    # vq_batch whole images. A step costs about what its pixels cost, and a crop holds denser foreground (the objects,
    # which the loss weighs vq_fg_weight times more)
    vq_crop: int = 0
    vq_crop_batch: int = 48
    vq_full_every: int = 0
    # stage 1b: the understanding encoder alone, with the patch probe (0 skips it). Trained only through the language
    # model, a from-scratch vision encoder learns colours and positions but hardly shapes
    vis_steps: int = 2000
    vis_batch: int = 32
    vis_lr: float = 5e-4
    vis_warmup: int = 100
    # stage 2: language model
    lm_steps: int = 3000
    gen_batch: int = 64  # prompt -> image-token sequences per step
    und_batch: int = 24  # image -> text sequences per step (GvU needs a strong judge: understanding gets its own rows)
    lm_lr: float = 1e-3
    lm_warmup: int = 200
    prompt_dropout: float = 0.1  # fraction of generation prompts replaced by the unconditional layout (for CFG)
    gen_weight: float = 3.0  # weight of the generation loss against the understanding losses
    spatial_share: float = 0.3  # share of understanding rows and ranking groups drawn from spatial prompts
    # the suite those spatial prompts come from: "geneval" only relations ("A left of B"), "genevalpp" only regions,
    # "" both (about half each)
    spatial_suite: str = "geneval"
    # hard-negative ranking: images per step whose true prompt must out-score up to 3 minimal edits of it
    rank_images: int = 12
    rank_weight: float = 1.0
    aux_weight: float = 1.0  # dense per-patch shape/colour/size labels on the vision features (a probe head)
    # stages 1b, 2 and 3: a linear head must read each patch's column and row from the encoder's output (1b) and from
    # the aligned image features, the language model's input (2, 3). Without it the aligned features hardly say where
    # a patch is (a linear probe reads an object patch's column 18% of the time, chance 12.5%;
    # experiments/relation_probe.py), so relations cannot be read
    pos_weight: float = 0.0
    # stages 1b and 2: a linear head must read, from each object patch of a two-object scene, where the other object
    # lies (GenEval's relations: left of, right of, above, below; a diagonal pair holds two). A relation word then
    # reads like a colour, off the named object's own patches
    rel_weight: float = 0.0
    # stages 2 and 3: understanding and ranking rows captioned with a spatial prompt take only prompts whose relation
    # edit is a train prompt too (mirror_is_train). The split holds out prompt texts, so for 16 of the 31 eval position
    # prompts the mirrored text is a train prompt and the true one is not: a model that learns from the text alone
    # which way a pair's relation goes guesses wrong on the eval split
    balanced_relations: bool = True
    # stages 2 and 3: geneval-style captions of plain understanding rows are train-split prompts only. Those captions
    # are built from the scene ("a photo of a heart right of a cross" when it is true), and without this about 8% of
    # them are eval-split prompt texts and 0.4% name a held-out relation
    caption_train_only: bool = True
    data_workers: int = 0  # processes making stage-2 batches ahead (for a GPU; the batches are the same either way)
    # stage 1c: the VQ decoder alone, on the frozen encoder's codes (the image tokens do not change; 0 skips it)
    dec_steps: int = 800
    dec_batch: int = 32
    dec_lr: float = 5e-4
    dec_warmup: int = 50
    dec_small: float = 0.0  # stage 1c: share of its images drawn with every object small (same scene, same places)
    # stage 1c: its scenes may hold held-out colour-shape pairs in the colours a prompt leaves open ("four triangles"
    # with a green one). No other stage draws them, so the image tokens and the language model stay as they are; only
    # the decoder learns to draw them
    dec_held_out: bool = False
    # stage 3: stage 2's mix continued, with part of the understanding images shown as their VQ reconstructions, the
    # pixels the reward's judge sees (0 steps skips it)
    s3_steps: int = 330
    s3_lr: float = 3e-4
    s3_warmup: int = 50
    und_recon: float = 0.5  # share of stage-3 understanding and ranking images replaced by their VQ reconstruction
    # stages 2 and 3: share of non-spatial understanding and ranking scenes given 1-2 extra objects of shapes their
    # prompt does not name (the prompt stays true; generation rows never get them). Without them a counting prompt's
    # scene holds only the counted objects, so "three stars" can be read as "three objects"
    # (experiments/counting_probe.py). A counting ranking group with extras also gets the edit that names the total
    # count ("four stars" for three stars and a heart)
    und_extra: float = 0.0
    from_model: str = ""  # a saved model directory to run stages 1c and 3 from, instead of stages 0-2 (--from-model)
    # a saved model directory whose VQ tokenizer stands for stage 1 (--vq-from): its weights, bit for bit, become the
    # finished stage 1, and every later stage trains as the recipe says (with dec_steps=0 its decoder stays as it is)
    vq_from: str = ""


# fields that change how fast a stage runs, not what it learns (up to float rounding): a run resumes under any value
# of them, also a run folder made before such a field existed
SPEED_ONLY = ("vq_norm_fp32", "torch_compile", "bf16")
# fields that say where or how a stage runs, not what it learns: a run resumes under any value of them (the resumed
# steps then round floats as that machine and thread count do). Stage-2 batches are the same for any data_workers, and
# a checkpoint holds everything the next steps read (RNGs, optimiser, the VQ's usage counts), so save_every changes
# only how much a crash loses
RUNTIME = ("threads", "device", "data_workers", "save_every")

# what a run folder written before a field existed ran with: the value that leaves the field's feature off (the
# recipe as it was then). A run folder lacking a field resumes only under this value
BEFORE_FIELD = {"vq_norm_fp32": False, "torch_compile": False, "vq_edge_weight": 0.0, "vis_steps": 0,
                "gen_weight": 1.0, "spatial_share": 0.0, "spatial_suite": "", "rank_images": 0, "aux_weight": 0.0,
                "balanced_relations": False, "caption_train_only": False, "dec_steps": 0, "s3_steps": 0}

# integer fields and their least allowed value; learning rates (> 0, finite); other float fields in [lo, hi]
_MIN_INT = {"threads": 1, "save_every": 1, "vq_batch": 1, "vq_restart_every": 1, "vis_batch": 1, "gen_batch": 1,
            "und_batch": 1, "dec_batch": 1, "vq_steps": 0, "vis_steps": 0, "lm_steps": 0, "dec_steps": 0,
            "s3_steps": 0, "vis_warmup": 0, "lm_warmup": 0, "dec_warmup": 0, "s3_warmup": 0, "rank_images": 0,
            "data_workers": 0, "vq_crop": 0, "seed": 0}  # vq_crop_batch, vq_full_every: check_crop
_MAX_INT = {"seed": 2**32 - 1, "threads": 1024, "data_workers": 256}
_LR_FIELDS = ("vq_lr", "vis_lr", "lm_lr", "dec_lr", "s3_lr")
_FLOAT_RANGE = {"prompt_dropout": (0.0, 1.0), "spatial_share": (0.0, 1.0), "und_recon": (0.0, 1.0),
                "und_extra": (0.0, 1.0), "dec_small": (0.0, 1.0), "vq_fg_weight": (0.0, None),
                "vq_edge_weight": (0.0, None), "gen_weight": (0.0, None), "rank_weight": (0.0, None),
                "aux_weight": (0.0, None), "pos_weight": (0.0, None), "rel_weight": (0.0, None)}


def validate(cfg: PretrainConfig) -> None:
    """Every check that a recipe (a preset with its --set fields, --threads, --device, --from-model) can fail, before
    any folder is made or any work starts. Raises ConfigError saying which field is wrong and what it may be."""
    check_types(cfg)
    if cfg.spec not in nano.SPECS:
        raise ConfigError(f"spec={cfg.spec!r}: not a model size; choose one of {', '.join(nano.SPECS)}")
    for name, least in _MIN_INT.items():
        v, most = getattr(cfg, name), _MAX_INT.get(name)
        if v < least or (most is not None and v > most):
            raise ConfigError(f"{name}={v}: must be at least {least}" + (f" and at most {most}" if most is not None
                                                                          else "") + f" (--set {name}=...)")
    for name in _LR_FIELDS:
        v = getattr(cfg, name)
        if not (v > 0 and math.isfinite(v)):  # also refuses nan
            raise ConfigError(f"{name}={v}: a learning rate must be above 0 and finite, e.g. --set {name}=1e-3")
    for name, (lo, hi) in _FLOAT_RANGE.items():
        v = getattr(cfg, name)
        if not (math.isfinite(v) and lo <= v and (hi is None or v <= hi)):  # also refuses nan and inf
            raise ConfigError(f"{name}={v}: must be " + (f"between {lo} and {hi}" if hi is not None else
                                                          f"a finite number of at least {lo}") + f" (--set {name}=...)")
    if not (cfg.device == "cpu" or cfg.device == "cuda" or cfg.device.startswith("cuda:")):
        raise ConfigError(f"device={cfg.device!r}: give cpu or cuda (or cuda:N)")
    if cfg.device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"device={cfg.device!r}, but this torch sees no GPU (torch {torch.__version__}); "
                          "use --device cpu, or install a CUDA build of torch")
    if cfg.spatial_suite not in ("",) + tuple(SPATIAL_TAGS):
        raise ConfigError(f"spatial_suite={cfg.spatial_suite!r}: give one of {', '.join(SPATIAL_TAGS)}, or leave it "
                          "empty for both")
    check_crop(cfg)
    if cfg.from_model and cfg.vq_from:
        raise ConfigError("--from-model and --vq-from both say where weights come from: --from-model takes the whole "
                          "model (stages 0-2), --vq-from only the VQ (stage 1); give one")
    if cfg.from_model:
        check_source(cfg)
    if cfg.vq_from:
        check_vq_source(cfg)


def check_types(cfg: PretrainConfig) -> None:
    """Each field holds its annotation's type (a recipe built in code, not through --set, may not): an int where a
    float is asked is fine, a bool is not an int, every float is finite."""
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        kind = {"int": int, "float": (int, float), "bool": bool, "str": str}[str(f.type)]
        if not isinstance(v, kind) or (f.type != "bool" and isinstance(v, bool)):
            raise ConfigError(f"{f.name}={v!r}: expected {f.type} (--set {f.name}=...)")
        if f.type == "float" and not math.isfinite(v):
            raise ConfigError(f"{f.name}={v}: must be a finite number (--set {f.name}=...)")


def check_crop(cfg: PretrainConfig) -> None:
    """A clear error for crop settings (vq_crop, vq_crop_batch, vq_full_every) that stage 1 cannot train with."""
    if not cfg.vq_crop:
        return
    spec = nano.SPECS[cfg.spec]
    size = cfg.vq_crop
    if size % spec.patch_size or not spec.patch_size <= size <= spec.image_size:
        raise ConfigError(f"vq_crop={size}: a crop side must be a multiple of {spec.patch_size} (the VQ's "
                          f"downsampling) between {spec.patch_size} and the image side {spec.image_size}; 0 trains "
                          "stage 1 on whole images")
    if cfg.vq_crop_batch < 1 or cfg.vq_full_every < 0:
        raise ConfigError(f"vq_crop_batch={cfg.vq_crop_batch}, vq_full_every={cfg.vq_full_every}: give at least 1 "
                          "crop a step, and every N-th step on whole images with N >= 0 (0: none)")


def _model_config(src: str, flag: str) -> dict:
    """config.json of a saved model directory, or a ConfigError naming the file."""
    path = os.path.join(src, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"{flag} {src}: cannot read {path} ({type(e).__name__}); give a directory written by "
                          "`gvu pretrain` (its OUT/model), e.g. models/nano-janus") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{flag} {src}: {path} holds no JSON object; give a model directory such as "
                          "models/nano-janus")
    return d


def check_source(cfg: PretrainConfig) -> None:
    """A clear error for a --from-model directory that stages 1c and 3 cannot start from."""
    src = cfg.from_model
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json")
               if not os.path.exists(os.path.join(src, f))]
    if missing:
        raise ConfigError(f"--from-model {src!r} is not a saved nano-Janus directory (missing {', '.join(missing)}); "
                          "give a directory written by `gvu pretrain` (its OUT/model), e.g. models/nano-janus")
    if not cfg.s3_steps and not cfg.dec_steps:
        raise ConfigError("this recipe has no stage 1c or 3 (dec_steps=0, s3_steps=0): --from-model runs only those")
    vq = _model_config(src, "--from-model").get("vq_config") or {}
    spec = nano.SPECS[cfg.spec]
    if "num_patches" not in vq:
        from transformers import JanusVQVAEConfig
        vq["num_patches"] = JanusVQVAEConfig().num_patches
    tokens = vq["num_patches"] ** 2
    if tokens != spec.num_image_tokens:
        raise ConfigError(f"--from-model {src}: {tokens} image tokens, but spec {cfg.spec!r} has "
                          f"{spec.num_image_tokens}; give --set spec=... to match the model")


def check_vq_source(cfg: PretrainConfig) -> None:
    """A clear error for a --vq-from directory whose VQ tokenizer cannot stand for this spec's stage 1."""
    src = cfg.vq_from
    missing = [f for f in ("config.json", "model.safetensors") if not os.path.exists(os.path.join(src, f))]
    if missing:
        raise ConfigError(f"--vq-from {src!r} is not a saved model directory (missing {', '.join(missing)}); give a "
                          "directory written by `gvu pretrain` (its OUT/model), e.g. models/nano-janus")
    got = _model_config(src, "--vq-from").get("vq_config") or {}
    want = nano.vq_sizes(nano.SPECS[cfg.spec])
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if diff:
        raise ConfigError(f"--vq-from {src}: its VQ tokenizer is not spec {cfg.spec!r}'s (theirs, the spec's: "
                          f"{diff}); give a model whose VQ has this spec's sizes")
