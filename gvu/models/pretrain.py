"""`gvu pretrain`: build and train nano-Janus from scratch on the nano world. Resumable; logs to <out>/log.jsonl.

  stage 0  tokenizer (BPE on the world's texts), processor and JanusConfig -> <out>/tokenizer, <out>/config.json
  stage 1  VQ tokenizer (gvu.models.vq_train) on world images                 -> <out>/stage1.pt
  stage 1c (v4) the VQ decoder alone, on the frozen encoder's codes             -> <out>/decoder.pt
  stage 1b understanding encoder (vision model) alone, with a patch probe       -> <out>/vision.pt
  stage 2  language model, jointly on understanding (image -> caption, image + question -> answer) and
           generation (prompt -> image tokens, prompt dropout for guidance)   -> <out>/stage2.pt
  stage 3  (v4) stage 2 continued, with half of the understanding images replaced by their VQ reconstructions
           (encode -> decode, the decoder that makes generated images)           -> <out>/stage3.pt
  final    the whole model directory (safetensors + tokenizer + processor)    -> <out>/model
Each stage checkpoints every `save_every` steps (atomically); rerunning the same command continues where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, fields, replace

import numpy as np
import torch
from tqdm import tqdm

from gvu.models import nano
from gvu.models.vq_train import (CodebookEMA, compile_vq, fp32_group_norms, normalise_codebook, restart_dead_codes,
                                 vq_loss)
from gvu.world.prompts import make_prompt, split_of, HELD_OUT_PAIRS
from gvu.world.sampler import sample_scene
from gvu.world.scene import render
from gvu.world.vocab import SUITES


@dataclass(frozen=True)
class PretrainConfig:
    """A pretraining recipe. Presets: PRESETS below."""

    spec: str = "nano"  # model sizes, a key of gvu.models.nano.SPECS
    device: str = "cpu"  # "cuda" trains on a GPU (data are still made on the CPU)
    seed: int = 0
    threads: int = 2  # torch CPU threads
    # bf16 autocast where this machine computes bf16 natively (use_bf16): a CUDA GPU with bf16, a CPU with AVX512-BF16 or
    # AMX (1.3-3.6x faster than fp32 there, JANUS-NOTES). On other CPUs (AVX2 only) the stages run in fp32, since torch
    # emulates bf16 matrix products there and is many times slower (benchmarks/precision_speed.py).
    bf16: bool = True
    # stages 1 and 1c: the VQ's group norms compute in fp32 under bf16 autocast (vq_train.FP32GroupNorm): 1.5x faster
    # VQ steps on the CPU. False (v0-v5's runs) keeps torch's bf16 group norm.
    vq_norm_fp32: bool = False
    # torch.compile the VQ's encoder and decoder (stages 1 and 1c) and the language model (stages 2 and 3), on the CPU
    # only (not yet checked on a GPU, where stages run eagerly). On the 2-core CPU a step of stage 1 takes 0.41 s instead
    # of 0.63, of 1c 0.34 instead of 0.47, of 2 1.10 instead of 1.20 (benchmarks/pretrain_speed.py). Where torch cannot
    # compile (no C++ compiler), the stages run eagerly and say so.
    torch_compile: bool = False
    save_every: int = 200  # steps between checkpoints
    # stage 1: VQ
    vq_steps: int = 1200
    vq_batch: int = 32
    vq_lr: float = 1e-3
    vq_restart_every: int = 50  # restart codes unused over this many steps
    vq_fg_weight: float = 10.0  # weight of object pixels against background in the reconstruction loss
    vq_edge_weight: float = 0.0  # weight of the image-gradient (edge) loss
    # stage 1 on object-centred crops (0: whole images, as every preset before nano-crop): a step trains on
    # vq_crop_batch crops of vq_crop x vq_crop pixels, each around a random object of its scene, except every
    # vq_full_every-th step (0: none), which trains on vq_batch whole images. A step costs about what its pixels cost,
    # and a crop holds denser foreground (the objects, which the loss weighs 10x) than a whole image.
    vq_crop: int = 0
    vq_crop_batch: int = 48
    vq_full_every: int = 0
    # stage 1b: the understanding encoder alone, with the patch probe (0 skips it; v0 and v1 had none)
    vis_steps: int = 0
    vis_batch: int = 32
    vis_lr: float = 5e-4
    vis_warmup: int = 100
    # stage 2: language model
    lm_steps: int = 2600
    gen_batch: int = 24  # prompt -> image-token sequences per step
    und_batch: int = 32  # image -> text sequences per step (understanding gets more data: GvU needs a strong teacher)
    lm_lr: float = 1e-3
    lm_warmup: int = 200
    prompt_dropout: float = 0.1  # fraction of generation prompts replaced by the unconditional layout (for CFG)
    gen_weight: float = 1.0  # weight of the generation loss against the understanding losses
    spatial_share: float = 0.0  # share of understanding rows and ranking groups drawn from spatial prompts (v3)
    # the suite those spatial prompts come from: "" both (about half geneval's position prompts, "A left of B"; the
    # rest genevalpp's regions prompts), as every preset; "geneval" only relations, "genevalpp" only regions
    spatial_suite: str = ""
    # understanding aids (v1; both off reproduces v0's stage 2)
    rank_images: int = 0  # images per step whose true prompt must out-score 3 minimal edits of it (hard negatives)
    rank_weight: float = 1.0
    aux_weight: float = 0.0  # dense per-patch shape/colour/size labels on the vision features (a probe head)
    # stages 1b, 2 and 3 (off in every preset): a linear head must read each patch's column and row from the
    # encoder's output (1b) and from the aligned image features, the language model's input (2, 3). Without it the
    # aligned features hardly say where a patch is (a linear probe reads an object patch's column 18% of the time,
    # chance 12.5%; experiments/relation_probe.py), so relations cannot be read.
    pos_weight: float = 0.0
    # stages 1b and 2 (off in every preset): a linear head must read, from each object patch of a two-object scene,
    # where the other object lies (GenEval's relations of this object to it: left of, right of, above, below; a
    # diagonal pair holds two). A relation word then reads like a colour: off the named object's own patches, where
    # column and row alone (pos_weight) leave the language model to compare two objects' positions itself.
    rel_weight: float = 0.0
    # stages 2 and 3 (off in every preset): understanding and ranking rows captioned with a spatial prompt take only
    # prompts whose relation edit is a train prompt too (mirror_is_train). The split holds out prompt texts, so for
    # 16 of the 31 eval position prompts the mirrored text is a train prompt and the true one is not: a model that
    # learns from the text which way a pair's relation goes guesses wrong on the eval split
    balanced_relations: bool = False
    # stages 2 and 3 (off in every preset, so they reproduce the shipped model): geneval-style captions of plain
    # understanding rows are train-split prompts only. Those captions are built from the scene ("a photo of a heart
    # right of a cross" when it is true), and without this about 8% of them are eval-split prompt texts and 0.4% name a
    # held-out relation; every other training row (generation, spatial and ranking rows) takes train prompts only
    caption_train_only: bool = False
    data_workers: int = 0  # processes making stage-2 batches ahead (for a GPU; the batches are the same either way)
    # stage 1c (v4): the VQ decoder alone, on the frozen encoder's codes (the image tokens do not change; 0 skips it)
    dec_steps: int = 0
    dec_batch: int = 32
    dec_lr: float = 5e-4
    dec_warmup: int = 50
    # stage 1c (off in every preset): share of its images drawn with every object small (the same scene, the same
    # places). A first guess at v6's VQ misses, small shapes; it gave nothing beyond what more steps alone give (the
    # misses were held-out pairs: model card, "The eval scenes held unseen compositions")
    dec_small: float = 0.0
    # stage 1c (off in every preset): its scenes may hold held-out colour-shape pairs in the colours a prompt leaves
    # open ("four triangles" with a green one), as the benchmark's eval scenes did until 2026-12-02. No other stage
    # draws them, so the image tokens and the language model are as before; only the decoder learns to draw them
    # (model card, "The eval scenes held unseen compositions")
    dec_held_out: bool = False
    # stage 3 (v4): stage 2's mix continued, with part of the understanding images shown as their VQ reconstructions,
    # the pixels the reward's judge sees (0 steps skips it)
    s3_steps: int = 0
    s3_lr: float = 3e-4
    s3_warmup: int = 50
    und_recon: float = 0.5  # share of stage-3 understanding and ranking images replaced by their VQ reconstruction
    # stages 2 and 3 (off in every preset): share of non-spatial understanding and ranking scenes given 1-2 extra
    # objects of shapes their prompt does not name (the prompt stays true; generation rows never get them). Without
    # them a counting prompt's scene holds only the counted objects, so "three stars" can be read as "three objects":
    # v5's judge counts all objects in its generated images (experiments/counting_probe.py). A counting ranking
    # group with extras also gets the edit that names the total count ("four stars" for three stars and a heart).
    und_extra: float = 0.0
    from_model: str = ""  # a saved model directory to run stages 1c and 3 from, instead of stages 0-2 (--from-model)
    # a saved model directory whose VQ tokenizer stands for stage 1 (--vq-from): its weights, bit for bit, become the
    # finished stage 1, and every later stage trains as the recipe says (with dec_steps=0 its decoder stays as it is).
    # For a language model of another size on a VQ already trained (spec nano-deep on the shipped model's VQ)
    vq_from: str = ""


# fields that change how fast a stage runs, not what it learns (up to float rounding): a run resumes under any value of
# them, also a run folder made before such a field existed
SPEED_ONLY = ("vq_norm_fp32", "torch_compile", "bf16")
# fields that say where or how a stage runs, not what it learns: a run resumes under any value of them (the resumed steps
# then round floats as that machine and thread count do, as any two machines differ). Stage-2 batches are the same for
# any data_workers, and a checkpoint holds everything the next steps read (RNGs, optimiser, the VQ's usage counts), so
# save_every changes only how much a crash loses
RUNTIME = ("threads", "device", "data_workers", "save_every")

# integer fields and their least allowed value; learning rates (> 0); other float fields in [lo, hi] (None: unbounded)
_MIN_INT = {"threads": 1, "save_every": 1, "vq_batch": 1, "vq_restart_every": 1, "vis_batch": 1, "gen_batch": 1,
            "und_batch": 1, "dec_batch": 1, "vq_steps": 0, "vis_steps": 0, "lm_steps": 0, "dec_steps": 0, "s3_steps": 0,
            "vis_warmup": 0, "lm_warmup": 0, "dec_warmup": 0, "s3_warmup": 0, "rank_images": 0, "data_workers": 0,
            "vq_crop": 0}
_LR_FIELDS = ("vq_lr", "vis_lr", "lm_lr", "dec_lr", "s3_lr")
_FLOAT_RANGE = {"prompt_dropout": (0.0, 1.0), "spatial_share": (0.0, 1.0), "und_recon": (0.0, 1.0),
                "und_extra": (0.0, 1.0), "dec_small": (0.0, 1.0), "vq_fg_weight": (0.0, None),
                "vq_edge_weight": (0.0, None),
                "gen_weight": (0.0, None), "rank_weight": (0.0, None), "aux_weight": (0.0, None), "pos_weight": (0.0, None),
                "rel_weight": (0.0, None)}


def validate(cfg: "PretrainConfig") -> None:
    """Every check that a recipe (a preset with its --set fields, --threads, --device, --from-model) can fail, before
    any folder is made or any work starts. Raises ValueError saying which field is wrong and what it may be."""
    if cfg.spec not in nano.SPECS:
        raise ValueError(f"spec={cfg.spec!r}: not a model size; choose one of {', '.join(nano.SPECS)}")
    for name, least in _MIN_INT.items():
        if getattr(cfg, name) < least:
            raise ValueError(f"{name}={getattr(cfg, name)}: must be at least {least}")
    for name in _LR_FIELDS:
        if not getattr(cfg, name) > 0:  # also refuses nan
            raise ValueError(f"{name}={getattr(cfg, name)}: a learning rate must be above 0")
    for name, (lo, hi) in _FLOAT_RANGE.items():
        v = getattr(cfg, name)
        if not (lo <= v and (hi is None or v <= hi)):  # also refuses nan
            raise ValueError(f"{name}={v}: must be " + (f"between {lo} and {hi}" if hi is not None else f"at least {lo}"))
    if not (cfg.device == "cpu" or cfg.device == "cuda" or cfg.device.startswith("cuda:")):
        raise ValueError(f"device={cfg.device!r}: give cpu or cuda (or cuda:N)")
    if cfg.device != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device!r}, but this torch sees no GPU (torch {torch.__version__}); "
                         "use --device cpu, or install a CUDA build of torch")
    if cfg.spatial_suite not in ("",) + tuple(SPATIAL_TAGS):
        raise ValueError(f"spatial_suite={cfg.spatial_suite!r}: give one of {', '.join(SPATIAL_TAGS)}, or leave it "
                         "empty for both")
    check_crop(cfg)
    if cfg.from_model and cfg.vq_from:
        raise ValueError("--from-model and --vq-from both say where weights come from: --from-model takes the whole "
                         "model (stages 0-2), --vq-from only the VQ (stage 1); give one")
    if cfg.from_model:
        check_source(cfg)
    if cfg.vq_from:
        check_vq_source(cfg)


def check_source(cfg: "PretrainConfig") -> None:
    """A clear error for a --from-model directory that stages 1c and 3 cannot start from."""
    src = cfg.from_model
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not os.path.exists(os.path.join(src, f))]
    if missing:
        raise ValueError(f"--from-model {src!r} is not a saved nano-Janus directory (missing {', '.join(missing)}); "
                         "give a directory written by `gvu pretrain` (its OUT/model), e.g. models/nano-janus")
    if not cfg.s3_steps and not cfg.dec_steps:
        raise ValueError("this preset has no stage 1c or 3 (dec_steps=0, s3_steps=0): --from-model runs only those")
    with open(os.path.join(src, "config.json")) as f:
        vq = json.load(f).get("vq_config", {})
    spec = nano.SPECS[cfg.spec]
    if "num_patches" not in vq:
        from transformers import JanusVQVAEConfig
        vq["num_patches"] = JanusVQVAEConfig().num_patches
    tokens = vq["num_patches"] ** 2
    if tokens != spec.num_image_tokens:
        raise ValueError(f"--from-model {src}: {tokens} image tokens, but spec {cfg.spec!r} has {spec.num_image_tokens}")

def parse_overrides(items, cls=None, flag: str = "--set") -> dict:
    """KEY=VALUE strings -> {field: value} for the dataclass cls (default PretrainConfig), each read and checked by
    the field's type as `gvu train --set` reads its fields (gvu.settings: 4000, 2e-3, true/false, text; a JSON list
    for a tuple field). Raises ValueError naming the bad item; nothing has run yet when it does."""
    from gvu.errors import UserError
    from gvu.settings import check_type, coerce

    cls = cls or PretrainConfig
    types = {f.name: f.type for f in fields(cls)}
    out = {}
    for kv in items:
        key, eq, text = kv.partition("=")
        if not eq:
            raise ValueError(f"{flag} {kv}: no value; write {flag} FIELD=VALUE")
        if key not in types:
            raise ValueError(f"{flag} {kv}: {key!r} is not a {cls.__name__} field")
        where = f"{flag} {kv}"
        try:
            value = check_type(coerce(text, types[key], where), types[key], where)
        except UserError as e:
            raise ValueError(str(e)) from e
        if types[key].startswith("tuple"):
            if not (isinstance(value, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in value)):
                raise ValueError(f"{where}: expected a list of integers such as [1, 2, 2], got {value!r}")
            value = tuple(value)
        out[key] = value
    return out


# v4: v3's stages 1, 1b and 2, then stage 1c (the VQ decoder alone, 800 steps) and stage 3 (400 steps of stage 2's
# mix with half the understanding images shown as VQ reconstructions)
_V4 = PretrainConfig(vq_steps=2000, vq_edge_weight=1.0, vis_steps=2000, lm_steps=2400, gen_batch=64, und_batch=16,
                     rank_images=6, aux_weight=1.0, gen_weight=3.0, spatial_share=0.3, dec_steps=800, s3_steps=400)

_V5 = replace(_V4, lm_steps=3600, vq_norm_fp32=True)
_V6 = replace(_V5, vq_steps=4000, torch_compile=True)

# v7: v6's recipe with every spatial row and ranking group a GenEval relation whose mirror is a train prompt too, at
# v6's 30% share, and no eval-split texts in training captions (stage 2 and 3 data only; stages 1, 1b and 1c run as v6's)
_V7 = replace(_V6, spatial_suite="geneval", balanced_relations=True, caption_train_only=True)

# v8: v7's recipe with more understanding per stage-2 step (24 understanding rows instead of 16, 12 ranking groups
# instead of 6) and fewer steps, so that stage 2 and 3 take v7's time (a stage-2 step cost 1.41 s against v7's 1.17 in a
# 60-step probe of each, one after the other: 3,600 x 1.17 / 1.41 = 2,990 steps, and stage 3's 400 scaled alike)
_V8 = replace(_V7, und_batch=24, rank_images=12, lm_steps=3000, s3_steps=330)

PRESETS = {
    # v8 (the shipped model, since 2026-12-04): the u24r12 run of the model card, its stages 1 and 1c taken from v6
    # and v7 (`--vq-from`, the same stage-1 and 1c settings). It picked the true prompt 0.972 of the time over three
    # scene draws (v7 0.879) at nano-GenEval 0.320 (v7 0.338)
    "nano": _V8,
    # the name of v8's recipe while it was a candidate (2026-12-04), kept so that the model card's commands run
    "nano-u24r12": _V8,
    # v7 (the shipped model 2026-12-03 to 2026-12-04): the relshare30 run of the model card, its stages 1 and 1c taken
    # from v6 (`--vq-from`, the same stage-1 and 1c settings). It picked the true prompt 0.879 of the time over three
    # scene draws (v6 0.867) and its reward reached ROC-AUC 0.858 on unguided images (v6 0.839). A stage-2 step costs
    # what v6's does (1.32 against 1.35 s, measured side by side on 2026-12-03), so from scratch it takes v6's time
    "nano-v7": _V7,
    # the name of v7's recipe while it was a candidate (2026-12-03), kept so that the model card's commands run
    "nano-rel30": _V7,
    # v6 (the shipped model 2026-11-28 to 2026-12-03): v5's recipe with 4,000 VQ steps instead of 2,000. On an H200 two
    # draws of stages 1 and 1c reached 0.986 and 0.977 on the VQ target against 0.917 and 0.857 at 2,000 steps
    # (experiments/vq_capacity_gpu.sh); on this 2-core CPU the longer stage 1 costs about 21 minutes more (about 146
    # in all). v6 is its second CPU draw (runs/v13cpu); see the model card. Since 2026-12-01 its stages are compiled
    # (torch_compile: the same recipe, about 25 minutes faster here)
    "nano-v6": _V6,
    # v5: v4's recipe with 3,600 stage-2 steps instead of 2,400 (the shipped model until 2026-11-28, and `nano` until
    # then). Since 2026-11-27 (eighth session) its VQ stages compute group norms in fp32 (faster on the CPU; v5 itself
    # had bf16). About 120 minutes on this CPU
    "nano-v5": _V5,
    # tried (2026-11-28, thirteenth session; no better than nano-v5, see the model card): the nano-v5 recipe with 3,800
    # stage-1 steps, 9 in 10 of them on 48 object-centred 32x32 crops and every 10th on 32 whole images: 20 minutes on
    # this CPU, against 21 for nano-v5's 2,000 whole-image steps and 43 for nano's 4,000. A crop step holds 45% of
    # the image tokens of a whole-image step, so codes are restarted after 100 unused steps instead of 50
    "nano-crop": replace(_V5, vq_steps=3800, vq_crop=32, vq_crop_batch=48, vq_full_every=10, vq_restart_every=100),
    "nano-v4": _V4,
    # the name `nano` had while it was a candidate (2026-11-28): v6's recipe as v6 ran it (eager), kept so that the model
    # card's commands run
    "nano-vq4k": replace(_V5, vq_steps=4000),
    # v3: v2's stages 1 and 1b; stage 2 spends its batch on generation (64 generation rows, 16 understanding rows, 6
    # ranking groups), weighs the generation loss 3x, and draws 30% of the understanding rows and ranking groups from
    # spatial prompts
    "nano-v3": PretrainConfig(vq_steps=2000, vq_edge_weight=1.0, vis_steps=2000, lm_steps=2400, gen_batch=64,
                              und_batch=16, rank_images=6, aux_weight=1.0, gen_weight=3.0, spatial_share=0.3),
    # v2: longer VQ with an edge loss, stage 1b, stage 2 with hard-negative ranking and the patch probe
    "nano-v2": PretrainConfig(vq_steps=2000, vq_edge_weight=1.0, vis_steps=2000, lm_steps=2400, gen_batch=32,
                              und_batch=32, rank_images=8, aux_weight=1.0),
    # v1: as nano-v2 without stage 1b
    "nano-v1": PretrainConfig(vq_steps=2000, vq_edge_weight=1.0, lm_steps=2400, gen_batch=32, und_batch=32,
                              rank_images=8, aux_weight=1.0),
    # v0, the first shipped checkpoint's recipe (kept to reproduce its numbers)
    "nano-v0": PretrainConfig(),
    "smoke": PretrainConfig(spec="smoke", vq_steps=30, vq_batch=8, lm_steps=30, gen_batch=8, und_batch=8,
                            lm_warmup=5, save_every=20, bf16=False, rank_images=2, aux_weight=1.0, vq_edge_weight=1.0,
                            vis_steps=10, vis_batch=8, vis_warmup=2, gen_weight=3.0, spatial_share=0.3,
                            s3_steps=6, s3_warmup=2, dec_steps=4, dec_batch=8, dec_warmup=1, vq_norm_fp32=True),
}


# ----------------------------------------------------------------------------------------------- data

# the tags whose prompts state where objects are (a relation between two objects, or regions of the image)
SPATIAL_TAGS: dict[str, tuple[str, ...]] = {"geneval": ("position",),
                                            "genevalpp": ("color_spatial_attr", "size_spatial_attr", "spatial_count_attr")}


def train_prompt(rng: random.Random, tags: dict[str, tuple[str, ...]] | None = None,
                 balanced: bool = False) -> tuple[str, dict]:
    """(suite, a random prompt from that suite's train split); held-out compositions never appear.
    tags: draw only from these {suite: tags} (default: every tag of every suite).
    balanced: also redraw a spatial prompt whose relation edit (perturb's mirror) is not a train prompt
    (PretrainConfig.balanced_relations)."""
    pool = tags or SUITES
    while True:
        suite = rng.choice(list(pool))
        m = make_prompt(suite, rng.choice(pool[suite]), rng)
        if "train" in split_of(m, suite) and not (balanced and not mirror_is_train(m, suite)):
            return suite, m


def mirror_is_train(metadata: dict, suite: str) -> bool:
    """Whether a prompt's relation edit ("A left of B" -> "A right of B"; regions swapped) is a train prompt too;
    True for a prompt with no relation. Training on only such spatial prompts leaves the text alone no hint of
    which way a relation goes: for each "A left of B" it also sees "A right of B"."""
    from gvu.world.perturb import perturb

    edit = perturb(metadata, "relation", random.Random(0))  # a relation edit draws nothing from the rng
    return edit is None or "train" in split_of(edit, suite)


def train_scene(rng: random.Random, with_suite: bool = False, spatial: bool = False, extra: float = 0.0,
                balanced: bool = False, spatial_suite: str = ""):
    """(prompt metadata, scene) for training: scenes avoid held-out colour-shape pairs altogether.
    with_suite: (suite, metadata, scene). spatial: the prompt comes from SPATIAL_TAGS.
    extra: the chance that a non-spatial scene also holds 1-2 objects of shapes the prompt does not name
    (PretrainConfig.und_extra); 0 draws nothing, so recipes without it see the same scenes as before.
    balanced: see train_prompt. spatial_suite: a spatial prompt comes from this suite only ("": either)."""
    tags = ({spatial_suite: SPATIAL_TAGS[spatial_suite]} if spatial_suite else SPATIAL_TAGS) if spatial else None
    suite, m = train_prompt(rng, tags, balanced)
    scene = None
    if extra and not spatial and rng.random() < extra:
        scene = scene_with_extras(m, rng)
    if scene is None:
        scene = sample_scene(m, rng, forbid=HELD_OUT_PAIRS)
    return (suite, m, scene) if with_suite else (m, scene)


def decoder_scene(rng: random.Random, small: float = 0.0, held_out: bool = False):
    """A stage-1c training scene: train_scene's, with every object made small with chance `small` (PretrainConfig.
    dec_small). The objects keep their places, so they still do not overlap. With small 0 nothing more is drawn, so
    recipes without it see the same scenes as before. held_out (PretrainConfig.dec_held_out): the colours the prompt
    leaves open are drawn from all colours, held-out colour-shape pairs included (the train prompt names none)."""
    if held_out:
        scene = sample_scene(train_prompt(rng)[1], rng)
    else:
        scene = train_scene(rng)[1]
    if small and rng.random() < small:
        scene = replace(scene, objects=tuple(replace(o, size="small") for o in scene.objects))
    return scene


def scene_with_extras(metadata: dict, rng: random.Random):
    """A scene for `metadata` plus 1-2 objects of shapes it does not name, or None when they do not fit (or the
    prompt would no longer hold)."""
    from gvu.world.rules import judge_scene
    from gvu.world.sampler import UnsatisfiableError
    from gvu.world.vocab import MAX_OBJECTS, SHAPES

    named = {r["class"] for r in metadata["include"]}
    room = MAX_OBJECTS - sum(int(r["count"]) for r in metadata["include"])
    free = [s for s in SHAPES if s not in named]
    k = min(rng.choice((1, 2)), room, len(free))
    if k < 1:
        return None
    extras = [{"class": s, "count": 1} for s in rng.sample(free, k)]
    try:
        scene = sample_scene({**metadata, "include": metadata["include"] + extras}, rng, forbid=HELD_OUT_PAIRS)
    except UnsatisfiableError:
        return None
    return scene if judge_scene(metadata, list(scene.objects), scene.image_size).correct else None


def hard_negatives(suite: str, metadata: dict, scene, rng: random.Random, k: int = 3) -> list[str]:
    """Up to k minimal edits of a true prompt (one colour, count, shape or relation changed) that are false for the
    scene and are themselves train-split prompts: no edit is an eval or held-out prompt text.
    For a counting prompt whose scene holds other objects too, the edit that names the scene's total count comes
    first ("four stars" for three stars and a heart): it is what a judge that counts objects, not stars, prefers."""
    from gvu.world.perturb import distractors, perturb
    from gvu.world.rules import judge_scene
    from gvu.world.vocab import MAX_COUNT

    ok = lambda d: split_of(d, suite) in ("train", "train+eval")  # noqa: E731
    out = []
    inc = metadata["include"]
    if len(inc) == 1 and inc[0]["count"] >= 2 and inc[0]["count"] < len(scene.objects) <= MAX_COUNT:
        d = perturb(metadata, "count", rng, count=len(scene.objects))
        if d and ok(d) and not judge_scene(d, list(scene.objects), scene.image_size).correct:
            out.append(d["prompt"])
    out += [d["prompt"] for d in distractors(metadata, scene, k, rng) if ok(d) and d["prompt"] not in out]
    return out[:k]


def patch_owners(scene, grid: int) -> np.ndarray:
    """[grid, grid] int: the index in scene.objects of the object covering most of each vision patch (at least 30% of
    it), -1 for background."""
    from gvu.world.scene import shape_coverage

    p = scene.image_size / grid
    best = np.full((grid, grid), 0.3, np.float32)
    owner = np.full((grid, grid), -1, np.int64)
    for i, o in enumerate(scene.objects):
        r = o.radius(scene.image_size) / p
        cov = shape_coverage(o.shape, o.x / p, o.y / p, r, r, grid, grid)
        win = cov > best
        best = np.where(win, cov, best)
        owner[win] = i
    return owner


def patch_labels(scene, grid: int) -> torch.Tensor:
    """[3, grid*grid] long: the shape, colour and size class (0 = background) of the object covering most of each
    vision patch (at least 30% of it). Targets of the auxiliary probe on the vision features."""
    from gvu.world.vocab import COLOR_NAMES, SHAPES, SIZES

    owner = patch_owners(scene, grid)
    lab = np.zeros((3, grid, grid), np.int64)
    for i, o in enumerate(scene.objects):
        for k, v in enumerate((SHAPES.index(o.shape), COLOR_NAMES.index(o.color), SIZES.index(o.size))):
            lab[k][owner == i] = v + 1
    return torch.from_numpy(lab.reshape(3, -1))


RELATIONS = ("left of", "right of", "above", "below")


def relation_labels(scene, grid: int) -> torch.Tensor:
    """[4, grid*grid] float: for each patch of an object in a two-object scene, 1 for each of RELATIONS that its
    object stands in to the other object (GenEval's relative_position, as the evaluator judges it), else 0; -1 (no
    target) on background patches and in scenes of any other number of objects. Targets of the relation probe."""
    from gvu.world.rules import Detection, relative_position

    lab = np.full((len(RELATIONS), grid, grid), -1.0, np.float32)
    if len(scene.objects) == 2:
        owner = patch_owners(scene, grid)
        dets = [Detection.from_obj(o, scene.image_size) for o in scene.objects]
        for i in range(2):
            rels = relative_position(dets[i], dets[1 - i])
            for k, rel in enumerate(RELATIONS):
                lab[k][owner == i] = float(rel in rels)
    return torch.from_numpy(lab.reshape(len(RELATIONS), -1))


def to_pixels(images: list) -> torch.Tensor:
    """PIL images -> float [B, 3, H, W] in [-1, 1] (the VQ's and the image processor's range)."""
    arr = np.stack([np.asarray(im, dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0


# ----------------------------------------------------------------------------------------------- utils

def check_crop(cfg: "PretrainConfig") -> None:
    """A clear error for crop settings (vq_crop, vq_crop_batch, vq_full_every) that stage 1 cannot train with."""
    if not cfg.vq_crop:
        return
    spec = nano.SPECS[cfg.spec]
    size = cfg.vq_crop
    if size % spec.patch_size or not spec.patch_size <= size <= spec.image_size:
        raise ValueError(f"vq_crop={size}: a crop side must be a multiple of {spec.patch_size} (the VQ's downsampling) "
                         f"between {spec.patch_size} and the image side {spec.image_size}; 0 trains stage 1 on whole "
                         "images")
    if cfg.vq_crop_batch < 1 or cfg.vq_full_every < 0:
        raise ValueError(f"vq_crop_batch={cfg.vq_crop_batch}, vq_full_every={cfg.vq_full_every}: give at least 1 crop "
                         "a step, and every N-th step on whole images with N >= 0 (0: none)")


def object_crops(pixels: torch.Tensor, scenes: list, size: int, rng: random.Random) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, size, size]: for each image, a crop around one of its scene's objects (drawn by rng),
    its centre moved by up to size/4 pixels each way and the crop kept inside the image."""
    h, w = pixels.shape[-2:]
    if size > min(h, w):
        raise ValueError(f"a {size}x{size} crop does not fit in {h}x{w} images")
    crops = []
    for img, scene in zip(pixels, scenes):
        o = rng.choice(scene.objects)
        cx, cy = o.x + rng.uniform(-size / 4, size / 4), o.y + rng.uniform(-size / 4, size / 4)
        left = min(max(int(round(cx - size / 2)), 0), w - size)
        top = min(max(int(round(cy - size / 2)), 0), h - size)
        crops.append(img[:, top:top + size, left:left + size])
    return torch.stack(crops)


def save_config(config, out: str) -> None:
    """config.json written whole or not at all (a crash mid-write must not leave a file that later runs trip on)."""
    tmp = os.path.join(out, ".config.tmp")
    config.save_pretrained(tmp)
    os.replace(os.path.join(tmp, "config.json"), os.path.join(out, "config.json"))
    os.rmdir(tmp)


def atomic_save(obj, path: str) -> None:
    from gvu.checkpoint import fsync

    tmp = path + ".tmp"
    torch.save(obj, tmp)
    fsync(tmp)  # on disk before the rename, so a power loss cannot leave an empty checkpoint under the real name
    os.replace(tmp, path)


def log(out: str, record: dict) -> None:
    with open(os.path.join(out, "log.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def trim_log(out: str, stage, step: int) -> None:
    """On resuming `stage` from its checkpoint at `step`: drop that stage's log records after the step, which the
    stopped run wrote and the resumed one writes again (other stages' records stay)."""
    from gvu.run_io import whole_records

    path = os.path.join(out, "log.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = [ln for ln, r in whole_records(lines) if not (r.get("stage") == stage and r.get("step", 0) > step)]
    if keep != lines:
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)


def cosine_lr(step: int, total: int, base: float, warmup: int = 0) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def restore(state: dict, model, opt, data_rng: random.Random | None = None) -> int:
    """Resume a stage from its checkpoint dict: weights, optimiser, RNGs (data_rng: the stage's data stream, when it
    has one; stage 2 seeds its data per step instead); returns the step."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"].cpu())  # a checkpoint loaded with map_location="cuda" moved it
    if data_rng is not None:
        data_rng.setstate(state["data_rng"])
    return state["step"]


# ----------------------------------------------------------------------------------------------- stages

def stage0(cfg: PretrainConfig, out: str):
    """Tokenizer, processor and config (deterministic from the seed)."""
    from transformers import AutoTokenizer, JanusConfig

    spec = nano.SPECS[cfg.spec]
    tok_dir = os.path.join(out, "tokenizer")
    if not os.path.exists(os.path.join(out, "config.json")):
        tok = nano.build_tokenizer(spec, nano.corpus(seed=cfg.seed))
        config = nano.build_config(spec, tok)
        tok.save_pretrained(tok_dir)
        save_config(config, out)  # last: its presence says stage 0 is done
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return spec, tok, JanusConfig.from_pretrained(out)


def vq_kernels(cfg: PretrainConfig, vq) -> None:
    """The recipe's speed-only kernel choices for a VQ that stage 1 or 1c trains: fp32 group norms, torch.compile."""
    if cfg.vq_norm_fp32:
        fp32_group_norms(vq)
    if use_compile(cfg):
        compile_vq(vq)


def stage1(cfg: PretrainConfig, out: str, config) -> dict:
    """Train the VQ tokenizer; returns its state dict."""
    from transformers import JanusVQVAE

    path = os.path.join(out, "stage1.pt")
    state = torch.load(path, weights_only=False, map_location=cfg.device) if os.path.exists(path) else None
    if state is not None and state["step"] >= cfg.vq_steps:
        return state["model"]
    check_crop(cfg)
    torch.manual_seed(cfg.seed)
    dev = torch.device(cfg.device)
    vq = JanusVQVAE(config.vq_config).to(dev)
    vq_kernels(cfg, vq)
    vq.train()  # JanusVQVAE.__init__ calls eval() (JANUS-NOTES pitfall 5)
    ema = CodebookEMA(vq)  # the codebook moves by EMA, not by the optimiser
    opt = torch.optim.Adam([p for p in vq.parameters() if p.requires_grad], lr=cfg.vq_lr)
    rng = random.Random(cfg.seed + 1)
    step = 0
    usage = torch.zeros(config.vq_config.num_embeddings, dtype=torch.long)  # code use since the last restart
    if state is not None:
        step = restore(state, vq, opt, rng)
        ema.load_state_dict(state["ema"])
        if "usage" in state:  # checkpoints from before 2026-11-28 lack it (their saves fell on restart steps)
            usage.copy_(state["usage"])
    trim_log(out, 1, step)  # records after the step resumed from (or any, starting afresh) are written again
    bar = tqdm(total=cfg.vq_steps, initial=step, desc="stage 1: VQ", unit="step")
    t0 = time.time()
    while step < cfg.vq_steps:
        crop = cfg.vq_crop and not (cfg.vq_full_every and (step + 1) % cfg.vq_full_every == 0)
        scenes = [train_scene(rng)[1] for _ in range(cfg.vq_crop_batch if crop else cfg.vq_batch)]
        pixels = to_pixels([render(s) for s in scenes])  # render draws nothing from rng: the same stream as before
        pixels = (object_crops(pixels, scenes, cfg.vq_crop, rng) if crop else pixels).to(dev)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.vq_steps, cfg.vq_lr)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg)):
            loss, metrics, idx, z = vq_loss(vq, pixels, fg_weight=cfg.vq_fg_weight, edge_weight=cfg.vq_edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(vq, z, idx)
        usage += torch.bincount(idx.flatten().cpu(), minlength=len(usage))
        step += 1
        if step % cfg.vq_restart_every == 0:
            metrics["vq/codes_used"] = int((usage > 0).sum())
            metrics["vq/restarted"] = restart_dead_codes(vq, usage, pixels, ema)
            usage.zero_()
        bar.update(1)
        bar.set_postfix(mse=f"{metrics['vq/mse']:.4f}")
        if step % 20 == 0 or step == cfg.vq_steps:
            log(out, {"stage": 1, "step": step, "time": time.time() - t0, **metrics})
        if step % cfg.save_every == 0 or step == cfg.vq_steps:
            if step == cfg.vq_steps:
                normalise_codebook(vq)
            atomic_save({"model": vq.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(), "step": step,
                         "rng": rng_state(), "data_rng": rng.getstate(), "usage": usage.clone()}, path)
    bar.close()
    return vq.state_dict()


# ----------------------------------------------------------------------------------------------- stage 2

UNDERSTANDING_QUERIES = ("What is in the image?", "List the objects in the image.")


class Stage2Data:
    """Builds stage-2 batches: generation (prompt -> image tokens) and understanding (image + query -> answer)."""

    def __init__(self, tokenizer, spec, cfg: PretrainConfig, rng: random.Random, recon: float = 0.0, seed_base: int = 3):
        from gvu.models.janus_format import JanusTemplate

        self.tok, self.spec, self.cfg, self.rng = tokenizer, spec, cfg, rng
        self.recon, self.seed_base = recon, seed_base  # stage 3: its reconstruction share and its own data seeds
        self.template = JanusTemplate()
        self.ids = {k: tokenizer.convert_tokens_to_ids(v) for k, v in
                    {"bos": nano.BOS, "eos": nano.EOS, "pad": nano.PAD, "boi": nano.BOI}.items()}
        self.und_prefix: dict[str, list[int]] = {}

    def encode(self, text: str) -> list[int]:
        return self.tok(text).input_ids  # adds BOS

    def answer(self, text: str) -> list[int]:
        return self.tok(" " + text, add_special_tokens=False).input_ids + [self.ids["eos"]]

    def generation(self) -> tuple:
        """-> (prompt Batch [B, T], pixels [B, 3, H, W] to encode into image tokens); prompt_dropout of the rows are
        unconditional."""
        from gvu.models.janus_format import left_pad, unconditional

        pairs = [train_scene(self.rng) for _ in range(self.cfg.gen_batch)]
        prompt = left_pad([self.encode(self.template.generation(m["prompt"])) for m, _ in pairs], self.ids["pad"])
        drop = torch.tensor([self.rng.random() < self.cfg.prompt_dropout for _ in pairs])
        uncond = unconditional(prompt.ids, prompt.mask, self.ids["bos"], self.ids["boi"], self.ids["pad"])
        prompt.ids = torch.where(drop[:, None], uncond, prompt.ids)
        return prompt, to_pixels([render(s) for _, s in pairs])

    def prefix(self, query: str) -> list[int]:
        if query not in self.und_prefix:
            self.und_prefix[query] = self.encode(self.template.understanding(query, self.spec.num_image_tokens))
        return self.und_prefix[query]

    def spatial(self) -> bool:
        """Whether the next row draws a spatial prompt (spatial_share); draws nothing when the share is 0, so
        recipes without it see the same data as before."""
        return bool(self.cfg.spatial_share) and self.rng.random() < self.cfg.spatial_share

    def understanding(self) -> tuple[list, list, list]:
        """-> (sequences, answer lengths, scenes): image + query -> answer rows."""
        from gvu.world.captions import REWARD_QUERY, describe, questions

        seqs, answer_lens, scenes = [], [], []
        for _ in range(self.cfg.und_batch):
            if self.spatial():  # a spatial prompt, answered to the reward's query by the prompt itself
                m, scene = train_scene(self.rng, spatial=True, balanced=self.cfg.balanced_relations,
                                       spatial_suite=self.cfg.spatial_suite)
                query, ans = REWARD_QUERY, m["prompt"]
            else:
                _, scene = train_scene(self.rng, extra=self.cfg.und_extra)
                u = self.rng.random()
                if u < 0.5:  # the reward's own query, with varied true answers
                    query, ans = REWARD_QUERY, describe(scene, self.rng, self.rng.choice(("geneval", "geneval", "full", "partial")),
                                                     train_only=self.cfg.caption_train_only)
                elif u < 0.6:
                    query, ans = self.rng.choice(UNDERSTANDING_QUERIES), describe(scene, self.rng, "full")
                else:
                    _, query, ans = questions(scene, self.rng, 1)[0]
            a = self.answer(ans)
            seqs.append(self.prefix(query) + a)
            answer_lens.append(len(a))
            scenes.append(scene)
        return seqs, answer_lens, scenes

    def ranking(self) -> tuple[list, list, list, list[int]]:
        """-> (sequences, answer lengths, scenes, group sizes): for each of rank_images images, its true prompt
        under the reward's query followed by up to 3 minimal edits of it (perturb.distractors; only edits that are
        themselves train-split prompts, so no row here is an eval or held-out prompt text)."""
        from gvu.world.captions import REWARD_QUERY

        seqs, answer_lens, scenes, groups = [], [], [], []
        while len(groups) < self.cfg.rank_images:
            suite, m, scene = train_scene(self.rng, with_suite=True, spatial=self.spatial(), extra=self.cfg.und_extra,
                                          balanced=self.cfg.balanced_relations, spatial_suite=self.cfg.spatial_suite)
            edits = hard_negatives(suite, m, scene, self.rng)
            if not edits:
                continue
            groups.append(1 + len(edits))
            for text in [m["prompt"]] + edits:
                a = self.answer(text)
                seqs.append(self.prefix(REWARD_QUERY) + a)
                answer_lens.append(len(a))
                scenes.append(scene)
        return seqs, answer_lens, scenes, groups

    def batch(self, seqs: list, answer_lens: list, scenes: list) -> tuple:
        """-> (Batch [B, T], labels [B, T] with -100 outside answers, pixel_values [B, 3, H, W], patch labels [B, 3, N],
        reconstruct [B] bool (rows to show as VQ reconstructions; None without stage 3's share), objects: per row the
        sorted (shape, colour) pairs of its scene, which a reconstruction must still show to be used)."""
        from gvu.models.janus_format import left_pad

        batch = left_pad(seqs, self.ids["pad"])
        labels = torch.full_like(batch.ids, -100)
        for i, k in enumerate(answer_lens):
            labels[i, -k:] = batch.ids[i, -k:]
        images = {id(sc): render(sc) for sc in scenes}  # ranking rows share their scene: draw each once
        grid = int(round(self.spec.num_image_tokens ** 0.5))
        aux = None
        if self.cfg.aux_weight:
            labels_of = {id(sc): patch_labels(sc, grid) for sc in scenes}
            aux = torch.stack([labels_of[id(sc)] for sc in scenes])
        recon = objects = None
        if self.recon:  # drawn per scene, so a ranking group's rows share one image
            flag = {id(sc): self.rng.random() < self.recon for sc in scenes}
            recon = torch.tensor([flag[id(sc)] for sc in scenes])
            objects = [sorted((o.shape, o.color) for o in sc.objects) for sc in scenes]
        return batch, labels, to_pixels([images[id(sc)] for sc in scenes]), aux, recon, objects

    def reseed(self, k: int) -> None:
        """Start step k's data stream: every step draws from a seed of its own."""
        self.rng = random.Random((self.cfg.seed + self.seed_base) * 1_000_003 + k)

    def step(self, k: int) -> dict:
        """Every input of stage-2 step k, made on the CPU from a seed of its own (so batches do not depend on how
        many worker processes make them, and a resumed run sees the same data)."""
        self.reseed(k)
        prompt, gen_pixels = self.generation()
        seqs, lens, scenes = self.understanding()
        n_und, groups = len(seqs), []
        if self.cfg.rank_images:  # one understanding pass: the plain rows, then the ranking rows
            r_seqs, r_lens, r_scenes, groups = self.ranking()
            seqs, lens, scenes = seqs + r_seqs, lens + r_lens, scenes + r_scenes
        und, labels, pixels, patch, recon, objects = self.batch(seqs, lens, scenes)
        grid = int(round(self.spec.num_image_tokens ** 0.5))
        rel = torch.stack([relation_labels(sc, grid) for sc in scenes]) if self.cfg.rel_weight else None
        return {"prompt": prompt, "gen_pixels": gen_pixels, "und": und, "labels": labels, "pixels": pixels,
                "patch": patch, "rel": rel, "n_und": n_und, "groups": groups, "recon": recon, "objects": objects}


_WORKER_DATA: "Stage2Data | None" = None


def _worker_init(tok_dir: str, cfg: PretrainConfig, recon: float, seed_base: int) -> None:
    global _WORKER_DATA
    from transformers import AutoTokenizer

    torch.set_num_threads(1)
    _WORKER_DATA = Stage2Data(AutoTokenizer.from_pretrained(tok_dir), nano.SPECS[cfg.spec], cfg, random.Random(),
                              recon, seed_base)


def _worker_step(k: int) -> dict:
    return _WORKER_DATA.step(k)


def stage2_batches(data: Stage2Data, tok_dir: str, cfg: PretrainConfig, start: int, steps: int):
    """Yield data.step(k) for k = start .. steps-1; with cfg.data_workers > 0 they are made ahead of time in
    worker processes (a bounded window), which keeps a GPU busy. Same batches either way."""
    if not cfg.data_workers:
        for k in range(start, steps):
            yield data.step(k)
        return
    import collections
    import multiprocessing as mp

    # fork, as torch's DataLoader does on Linux: the workers only render and tokenize (no CUDA, one thread each)
    with mp.get_context("fork").Pool(cfg.data_workers, initializer=_worker_init,
                                     initargs=(tok_dir, cfg, data.recon, data.seed_base)) as pool:
        window = collections.deque()
        nxt = start
        while nxt < steps and len(window) < 4 * cfg.data_workers:
            window.append(pool.apply_async(_worker_step, (nxt,)))
            nxt += 1
        while window:
            batch = window.popleft().get()
            if nxt < steps:
                window.append(pool.apply_async(_worker_step, (nxt,)))
                nxt += 1
            yield batch


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over answer tokens of log p(token) [B] (labels -100 outside answers; logits[:, t] predicts t + 1)."""
    lp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = labels[:, 1:]
    mask = target != -100
    tok = lp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(1)


def ranking_loss(scores: torch.Tensor, groups: list[int]) -> tuple[torch.Tensor, float]:
    """Listwise hard-negative loss: -log softmax over each group's scores, true prompt first. -> (loss, accuracy)."""
    losses, hits = [], []
    for g in torch.split(scores, groups):
        losses.append(-torch.log_softmax(g, dim=0)[0])
        hits.append(float(g.argmax() == 0))
    return torch.stack(losses).mean(), float(np.mean(hits))


class PatchProbe(torch.nn.Module):
    """Linear heads on the vision features predicting each patch's shape, colour and size (auxiliary; not saved)."""

    def __init__(self, hidden: int):
        from gvu.world.vocab import COLOR_NAMES, SHAPES, SIZES

        super().__init__()
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, len(v) + 1) for v in (SHAPES, COLOR_NAMES, SIZES))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """features [B, N, H], labels [B, 3, N] -> (loss, shape accuracy on object patches).

        Per head: cross-entropy over all patches (object or background) plus cross-entropy over object patches only;
        most patches are background, and without the second term the loss hardly asks for shapes."""
        import torch.nn.functional as F

        obj = labels[:, 0] > 0
        losses, acc = [], float("nan")
        for k, h in enumerate(self.heads):
            logits = h(features).float()
            losses.append(F.cross_entropy(logits.flatten(0, 1), labels[:, k].flatten()))
            if obj.any():
                losses.append(F.cross_entropy(logits[obj], labels[:, k][obj]))
                if k == 0:
                    acc = (logits[obj].argmax(-1) == labels[:, 0][obj]).float().mean().item()
        return sum(losses) / len(self.heads), acc


class PositionProbe(torch.nn.Module):
    """Linear heads on the aligned image features [B, N, H] (what the language model reads) predicting each patch's
    column and row in the grid x grid layout (auxiliary; not saved)."""

    def __init__(self, hidden: int, grid: int):
        super().__init__()
        self.grid = grid
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden, grid) for _ in range(2))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, float]:
        """-> (mean cross-entropy of column and row over every patch, column accuracy)."""
        import torch.nn.functional as F

        b, n, _ = features.shape
        idx = torch.arange(n, device=features.device)
        targets = (idx % self.grid, idx // self.grid)
        logits = [h(features).float() for h in self.heads]
        loss = sum(F.cross_entropy(lg.flatten(0, 1), t.repeat(b)) for lg, t in zip(logits, targets)) / 2
        return loss, (logits[0].argmax(-1) == targets[0]).float().mean().item()


class RelationProbe(torch.nn.Module):
    """A linear head on the vision features [B, N, H] predicting, for each object patch of a two-object scene, which
    of RELATIONS its object stands in to the other (auxiliary; not saved)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.head = torch.nn.Linear(hidden, len(RELATIONS))

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        """features [B, N, H], labels [B, 4, N] (relation_labels: 1, 0, or -1 for no target) -> (binary cross-entropy
        over the patches with targets, the share of them whose four relations are all predicted right). No patch with
        a target: a zero loss (still part of the graph) and accuracy nan."""
        import torch.nn.functional as F

        logits = self.head(features).float()  # [B, N, 4]
        known = labels[:, 0] >= 0  # [B, N]: a patch has all four targets or none
        if not known.any():
            return logits.sum() * 0.0, float("nan")
        lg, tg = logits[known], labels.transpose(1, 2)[known]  # [P, 4]
        acc = ((lg > 0) == (tg > 0.5)).all(-1).float().mean().item()
        return F.binary_cross_entropy_with_logits(lg, tg), acc


def stage_vision(cfg: PretrainConfig, out: str, config) -> dict | None:
    """Stage 1b: pretrain the understanding encoder (the SigLIP-style vision model) alone, with the patch probe:
    each patch's shape, colour and size. Returns {"vision": state dict, "probe": state dict}, or None when
    cfg.vis_steps is 0.

    With cfg.pos_weight, a position probe (each patch's column and row) trains beside it; with cfg.rel_weight, the
    relation probe (RelationProbe), which stage 2 then continues.

    Why: trained only through the language model, the from-scratch ViT learnt colours and positions but hardly
    shapes (v1: patch shape accuracy ~0.3 after 2,400 joint steps; true caption beat a wrong-shape one 60%). Alone,
    with warmup and cosine, it reaches ~0.85 patch shape accuracy after 1,000 steps (a sudden rise after ~700)."""
    from transformers.models.janus.modeling_janus import JanusVisionModel

    if not cfg.vis_steps:
        return None
    path = os.path.join(out, "vision.pt")
    state = torch.load(path, weights_only=False, map_location=cfg.device) if os.path.exists(path) else None
    if state is not None and state["step"] >= cfg.vis_steps:
        return _split_vision_state(state["model"])
    torch.manual_seed(cfg.seed + 4)
    dev = torch.device(cfg.device)
    grid = config.vision_config.image_size // config.vision_config.patch_size
    parts = {"vision": JanusVisionModel(config.vision_config), "probe": PatchProbe(config.vision_config.hidden_size)}
    if cfg.pos_weight:  # the encoder's output must also say where each patch is
        parts["pos"] = PositionProbe(config.vision_config.hidden_size, grid)
    if cfg.rel_weight:  # and, on an object's patches, where the other object of a pair lies
        parts["rel"] = RelationProbe(config.vision_config.hidden_size)
    both = torch.nn.ModuleDict(parts).to(dev)
    both.train()
    opt = torch.optim.AdamW(both.parameters(), lr=cfg.vis_lr, weight_decay=0.01)
    rng = random.Random(cfg.seed + 5)
    step = restore(state, both, opt, rng) if state is not None else 0
    trim_log(out, "1b", step)
    bar = tqdm(total=cfg.vis_steps, initial=step, desc="stage 1b: vision", unit="step")
    t0 = time.time()
    while step < cfg.vis_steps:
        scenes = [train_scene(rng)[1] for _ in range(cfg.vis_batch)]
        pixels = to_pixels([render(sc) for sc in scenes]).to(dev)
        labels = torch.stack([patch_labels(sc, grid) for sc in scenes]).to(dev)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.vis_steps, cfg.vis_lr, cfg.vis_warmup)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg)):
            features = both["vision"](pixels).last_hidden_state
            loss, acc = both["probe"](features, labels)
            record = {}
            if cfg.pos_weight:
                pos_loss, record["vision/pos_acc"] = both["pos"](features)
                loss = loss + cfg.pos_weight * pos_loss
            if cfg.rel_weight:
                rel = torch.stack([relation_labels(sc, grid) for sc in scenes]).to(dev)
                rel_loss, record["vision/rel_acc"] = both["rel"](features, rel)
                loss = loss + cfg.rel_weight * rel_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(both.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", shape_acc=f"{acc:.2f}")
        if step % 20 == 0 or step == cfg.vis_steps:
            log(out, {"stage": "1b", "step": step, "time": time.time() - t0, "loss/vision": loss.item(),
                      "vision/shape_acc": acc, **record, "lr": opt.param_groups[0]["lr"]})
        if step % cfg.save_every == 0 or step == cfg.vis_steps:
            atomic_save({"model": both.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng_state(),
                         "data_rng": rng.getstate()}, path)
    bar.close()
    return _split_vision_state(both.state_dict())


def stage_decoder(cfg: PretrainConfig, out: str, config, vq_state: dict) -> dict:
    """Stage 1c (v4): fine-tune the VQ decoder (and post_quant_conv) alone, with stage 1's loss, on the codes of the
    frozen encoder and codebook. The image tokens of every image stay exactly as they were, so a language model
    trained on them is unaffected; only the pixels decoded from tokens change. Returns the VQ state dict."""
    from transformers import JanusVQVAE

    if not cfg.dec_steps:
        return vq_state
    path = os.path.join(out, "decoder.pt")
    state = torch.load(path, weights_only=False, map_location=cfg.device) if os.path.exists(path) else None
    if state is not None and state["step"] >= cfg.dec_steps:
        return state["model"]
    torch.manual_seed(cfg.seed + 8)
    dev = torch.device(cfg.device)
    vq = JanusVQVAE(config.vq_config).to(dev)
    vq.load_state_dict(vq_state)
    vq_kernels(cfg, vq)
    vq.requires_grad_(False)
    trained = [*vq.decoder.parameters(), *vq.post_quant_conv.parameters()]
    for p in trained:
        p.requires_grad_(True)
    vq.train()
    opt = torch.optim.Adam(trained, lr=cfg.dec_lr)
    rng = random.Random(cfg.seed + 9)
    step = restore(state, vq, opt, rng) if state is not None else 0
    trim_log(out, "1c", step)
    bar = tqdm(total=cfg.dec_steps, initial=step, desc="stage 1c: VQ decoder", unit="step")
    t0 = time.time()
    while step < cfg.dec_steps:
        scenes = [decoder_scene(rng, cfg.dec_small, cfg.dec_held_out) for _ in range(cfg.dec_batch)]
        pixels = to_pixels([render(sc) for sc in scenes]).to(dev)
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, cfg.dec_steps, cfg.dec_lr, cfg.dec_warmup)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg)):
            loss, metrics, _, _ = vq_loss(vq, pixels, fg_weight=cfg.vq_fg_weight, edge_weight=cfg.vq_edge_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(mse=f"{metrics['vq/mse']:.4f}")
        if step % 20 == 0 or step == cfg.dec_steps:
            log(out, {"stage": "1c", "step": step, "time": time.time() - t0, **metrics, "lr": opt.param_groups[0]["lr"]})
        if step % cfg.save_every == 0 or step == cfg.dec_steps:
            atomic_save({"model": vq.state_dict(), "opt": opt.state_dict(), "step": step, "rng": rng_state(),
                         "data_rng": rng.getstate()}, path)
    bar.close()
    return vq.state_dict()


def _split_vision_state(sd: dict) -> dict:
    """ModuleDict(vision, probe[, rel]) state dict -> {"vision": ..., "probe": ...[, "rel": ...]} (the position heads
    stay behind: stage 2 starts its own)."""
    parts = ("vision", "probe") + (("rel",) if any(k.startswith("rel.") for k in sd) else ())
    return {part: {k[len(part) + 1:]: v for k, v in sd.items() if k.startswith(part + ".")} for part in parts}


def stage2(cfg: PretrainConfig, out: str, spec, tok, config, vq_state: dict, vision_state: dict | None = None):
    """Train the language model (vision encoder, aligners, LLM, generation embeddings and head); VQ frozen."""
    from transformers import JanusForConditionalGeneration

    torch.manual_seed(cfg.seed + 2)
    dev = torch.device(cfg.device)
    model = JanusForConditionalGeneration(config).to(dev)
    vq = model.model.vqmodel
    vq.load_state_dict(vq_state)
    with torch.no_grad():  # image-token input embeddings start as the VQ codes themselves (JANUS-NOTES pitfall 9)
        model.model.generation_embeddings.weight.copy_(vq.quantize.embedding.weight)
    probe = PatchProbe(config.vision_config.hidden_size).to(dev) if cfg.aux_weight else None
    if vision_state is not None:  # stage 1b's encoder (and its probe, which keeps the shape features in place)
        model.model.vision_model.load_state_dict(vision_state["vision"])
        if probe is not None:
            probe.load_state_dict(vision_state["probe"])
    rel_probe = None
    if cfg.rel_weight:  # stage 1b's relation head when it trained one
        with torch.random.fork_rng(devices=[]):  # a fresh head draws apart from the model's own initialisation
            torch.manual_seed(cfg.seed + 30)
            rel_probe = RelationProbe(config.vision_config.hidden_size).to(dev)
        if vision_state is not None and "rel" in vision_state:
            rel_probe.load_state_dict(vision_state["rel"])
    data = Stage2Data(tok, spec, cfg, random.Random())
    return lm_stage(cfg, out, model, probe, data, name="2", steps=cfg.lm_steps, lr=cfg.lm_lr, warmup=cfg.lm_warmup,
                    rel_probe=rel_probe)


def stage3(cfg: PretrainConfig, out: str, spec, tok, model):
    """Stage 3 (v4): stage 2's data and losses continued from stage 2's model for s3_steps (a fresh AdamW, warmup
    and cosine), with und_recon of the understanding and ranking images replaced by their VQ reconstructions.

    Why: the reward's judge reads decoded images, but stages 1b and 2 showed it only clean renderings. On v3, 4-way
    caption choice fell from 0.74 on renderings to 0.65 on their reconstructions (counting 0.76 -> 0.48; 200 eval
    prompts, `benchmarks/nano_model_eval.py --only understanding,understanding_recon`). The probe is off here: it is
    not part of a saved model, so a run continued from a model directory has none."""
    if not cfg.s3_steps:
        return model
    data = Stage2Data(tok, spec, cfg, random.Random(), recon=cfg.und_recon, seed_base=7)
    return lm_stage(cfg, out, model, None, data, name="3", steps=cfg.s3_steps, lr=cfg.s3_lr, warmup=cfg.s3_warmup)


@torch.no_grad()
def reconstruct_checked(vq, pixels: torch.Tensor, objects: list) -> tuple[torch.Tensor, int]:
    """VQ reconstructions of pixels [M, 3, H, W] in [-1, 1], rounded to 8-bit as generated images are; a row whose
    reconstruction the exact evaluator reads as other objects than its scene's (objects: sorted (shape, colour)
    pairs per row) keeps its rendering, so no label is taught on a picture that no longer shows it.
    -> (pixels, rows replaced)."""
    from gvu.models.vq_train import quantize
    from gvu.world.evaluator import detect

    rec = vq.decode(quantize(vq, pixels)[2]).float().clamp(-1, 1)
    u8 = ((rec + 1) * 127.5).round()
    arr = u8.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()
    ok = torch.tensor([sorted((d.shape or "?", d.color) for d in detect(a)) == obj for a, obj in zip(arr, objects)],
                      device=pixels.device)
    return torch.where(ok[:, None, None, None], u8 / 127.5 - 1, pixels), int(ok.sum())


def lm_stage(cfg: PretrainConfig, out: str, model, probe, data: Stage2Data, name: str, steps: int, lr: float,
             warmup: int, rel_probe=None):
    """The language-model loop of stages 2 and 3 (checkpoint <out>/stage<name>.pt, resumable). probe and rel_probe
    (a PatchProbe, a RelationProbe, or None) read the vision encoder's output of the understanding images."""
    import torch.nn.functional as F

    from gvu.models.janus import image_token_logits, text_logits
    from gvu.models.vq_train import quantize_indices

    path = os.path.join(out, f"stage{name}.pt")
    state = torch.load(path, weights_only=False, map_location=cfg.device) if os.path.exists(path) else None
    dev = torch.device(cfg.device)
    vq = model.model.vqmodel
    vq.requires_grad_(False)  # frozen; put in eval mode below, after model.train()
    grid = int(model.config.vision_config.num_image_tokens ** 0.5)
    pos_probe = None
    if cfg.pos_weight:  # its own seed: a stage resumed before its first save starts from the same probe
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 20 + int(name))
            pos_probe = PositionProbe(model.config.text_config.hidden_size, grid).to(dev)
    params = [p for p in model.parameters() if p.requires_grad] + (list(probe.parameters()) if probe else []) \
        + (list(pos_probe.parameters()) if pos_probe else []) + (list(rel_probe.parameters()) if rel_probe else [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    step = 0
    if state is not None:
        step = restore(state, model, opt)  # stage-2 data are seeded per step (Stage2Data.step)
        if probe is not None:
            probe.load_state_dict(state["probe"])
        if pos_probe is not None:
            pos_probe.load_state_dict(state["pos_probe"])
        if rel_probe is not None:
            rel_probe.load_state_dict(state["rel_probe"])
    trim_log(out, int(name), step)
    features = {}  # the vision features of the current understanding pass (aligner input and output), for the probes
    hooks = [model.model.aligner.register_forward_pre_hook(lambda mod, args: features.__setitem__("v", args[0])),
             model.model.aligner.register_forward_hook(lambda mod, args, out: features.__setitem__("aligned", out))]
    # On the CPU, eager attention (matmul + softmax): torch's CPU flash-attention backward took 18% of a stage-2 step
    # at these sizes, and eager makes the step 1.2x faster (1.48 -> 1.26 s, 2 threads). The same math; the model's
    # own setting (not saved in its config) comes back after the stage.
    attn = model.config._attn_implementation
    if dev.type == "cpu":
        model.set_attn_implementation("eager")
    lm = model.model.language_model
    compiled = use_compile(cfg)
    if compiled:  # only the language model: compiling the vision encoder too gained nothing on the CPU
        lm.compile()
    model.train()
    vq.eval()
    bar = tqdm(total=steps, initial=step, desc=f"stage {name}: LM", unit="step")
    t0 = time.time()
    try:
        for b in stage2_batches(data, os.path.join(out, "tokenizer"), cfg, step, steps):
            with torch.no_grad():
                tokens = quantize_indices(vq, b["gen_pixels"].to(dev))  # vq is frozen
            prompt, und, labels, pixels = b["prompt"].to(dev), b["und"].to(dev), b["labels"].to(dev), b["pixels"].to(dev)
            n_und, groups = b["n_und"], b["groups"]
            record = {}
            if b["recon"] is not None and b["recon"].any():
                rows = b["recon"].nonzero().squeeze(1).tolist()
                rec, used = reconstruct_checked(vq, pixels[rows], [b["objects"][i] for i in rows])
                pixels[rows] = rec
                record.update({"recon/rows": len(rows), "recon/used": used})
            # rows that show the same picture (a ranking group's captions) encode it once: in stage 2, 37 rows a
            # step hold 22 distinct images; text_logits gives each row its image's features (the same math)
            images, index = torch.unique(pixels.flatten(1), dim=0, return_inverse=True)
            images = images.view(-1, *pixels.shape[1:])
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, steps, lr, warmup)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg)):
                gen_logits = image_token_logits(model, prompt, tokens)
                gen_loss = F.cross_entropy(gen_logits.float().flatten(0, 1), tokens.flatten())
                logits = text_logits(model, und, images, index)
                und_loss = F.cross_entropy(logits[:n_und, :-1].float().flatten(0, 1), labels[:n_und, 1:].flatten(), ignore_index=-100)
                loss = cfg.gen_weight * gen_loss + und_loss
                if groups:
                    rank_loss, record["rank/acc"] = ranking_loss(sequence_logprobs(logits[n_und:], labels[n_und:]), groups)
                    record["loss/rank"] = rank_loss.item()
                    loss = loss + cfg.rank_weight * rank_loss
                if probe is not None:
                    aux_loss, record["aux/shape_acc"] = probe(features["v"][index], b["patch"].to(dev))
                    record["loss/aux"] = aux_loss.item()
                    loss = loss + cfg.aux_weight * aux_loss
                if pos_probe is not None:
                    pos_loss, record["aux/pos_acc"] = pos_probe(features["aligned"][index])
                    record["loss/pos"] = pos_loss.item()
                    loss = loss + cfg.pos_weight * pos_loss
                if rel_probe is not None:
                    rel_loss, record["aux/rel_acc"] = rel_probe(features["v"][index], b["rel"].to(dev))
                    record["loss/rel"] = rel_loss.item()
                    loss = loss + cfg.rel_weight * rel_loss
                features.clear()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(gen=f"{gen_loss.item():.3f}", und=f"{und_loss.item():.3f}",
                            **({"rank": f"{record['rank/acc']:.2f}"} if groups else {}))
            if step % 20 == 0 or step == steps:
                log(out, {"stage": int(name), "step": step, "time": time.time() - t0, "loss/gen": gen_loss.item(),
                          "loss/und": und_loss.item(), **record, "lr": opt.param_groups[0]["lr"]})
            if step % cfg.save_every == 0 or step == steps:
                atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                             "probe": probe.state_dict() if probe else None,
                             "pos_probe": pos_probe.state_dict() if pos_probe else None,
                             "rel_probe": rel_probe.state_dict() if rel_probe else None, "rng": rng_state()}, path)
    finally:  # also on an error: the caller gets the model with its own attention and no hooks
        for h in hooks:
            h.remove()
        bar.close()
        model.set_attn_implementation(attn)
        if compiled:  # the caller gets the eager module back, and stage 3's compile starts from empty caches
            lm._compiled_call_impl = None  # what nn.Module.compile set
            torch._dynamo.reset()
    return model


def save_model(model, tok, spec, out_dir: str) -> None:
    """The whole model directory, loadable offline with from_pretrained (safetensors, tokenizer, processor)."""
    import shutil

    tmp = out_dir + ".tmp"
    if os.path.exists(tmp):  # left by a crash mid-save
        shutil.rmtree(tmp)
    model.eval().cpu()
    model.save_pretrained(tmp, safe_serialization=True)
    nano.build_processor(spec, tok).save_pretrained(tmp)
    from gvu.models.janus import JanusBackendConfig
    # guidance 3: the JANUS-NOTES probe found it best for this model family (5 over-saturates a small model)
    JanusBackendConfig(default_cfg_scale=3.0).save(tmp)
    from gvu.checkpoint import fsync_folder
    fsync_folder(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def check_vq_source(cfg: "PretrainConfig") -> None:
    """A clear error for a --vq-from directory whose VQ tokenizer cannot stand for this spec's stage 1."""
    src = cfg.vq_from
    missing = [f for f in ("config.json", "model.safetensors") if not os.path.exists(os.path.join(src, f))]
    if missing:
        raise ValueError(f"--vq-from {src!r} is not a saved model directory (missing {', '.join(missing)}); give a "
                         "directory written by `gvu pretrain` (its OUT/model), e.g. models/nano-janus")
    with open(os.path.join(src, "config.json")) as f:
        got = json.load(f).get("vq_config") or {}
    want = nano.vq_sizes(nano.SPECS[cfg.spec])
    diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
    if diff:
        raise ValueError(f"--vq-from {src}: its VQ tokenizer is not spec {cfg.spec!r}'s (theirs, the spec's: {diff}); "
                         "give a model whose VQ has this spec's sizes")


def vq_checkpoint(src: str, vq_steps: int) -> dict:
    """A finished stage-1 checkpoint holding the VQ weights of the saved model src (as fp32)."""
    from safetensors.torch import load_file

    prefix = "model.vqmodel."
    weights = load_file(os.path.join(src, "model.safetensors"))
    state = {k[len(prefix):]: v.float() for k, v in weights.items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"{src}/model.safetensors holds no {prefix}* weights: is it a Janus model?")
    return {"model": state, "step": vq_steps, "vq_from": os.path.abspath(src)}


def from_saved(cfg: PretrainConfig, out: str):
    """Stages 0-2 taken from the saved model directory cfg.from_model: -> (spec, tokenizer, config, model)."""
    from transformers import AutoTokenizer, JanusConfig, JanusForConditionalGeneration

    src = cfg.from_model  # checked by check_source before the run began
    spec = nano.SPECS[cfg.spec]
    config = JanusConfig.from_pretrained(src)
    tok = AutoTokenizer.from_pretrained(src)
    tok_dir = os.path.join(out, "tokenizer")
    if not os.path.exists(os.path.join(out, "config.json")):
        tok.save_pretrained(tok_dir)
        save_config(config, out)
    model = JanusForConditionalGeneration.from_pretrained(src, torch_dtype=torch.float32).to(cfg.device)
    return spec, tok, config, model


def resolve(preset: str | PretrainConfig, **overrides) -> PretrainConfig:
    """A preset (name or config) with fields replaced, validated (ValueError before any work)."""
    if isinstance(preset, str) and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    cfg = PRESETS[preset] if isinstance(preset, str) else preset
    cfg = replace(cfg, **overrides)
    validate(cfg)
    return cfg


class RunFolder:
    """The run folder of a pretraining run, held for the run's length: made (or checked to hold this same recipe),
    locked against a second `gvu pretrain` writing into it at the same time, its recipe written atomically.
    Every refusal comes before anything in the folder changes."""

    def __init__(self, cfg: PretrainConfig, out: str):
        self.out = out
        model_dir = os.path.realpath(os.path.join(out, "model"))
        if cfg.from_model:
            src = os.path.realpath(cfg.from_model)
            if src == model_dir or src.startswith(model_dir + os.sep):
                raise ValueError(f"--from-model {cfg.from_model} lies in --out {out}'s model folder, which the run "
                                 "replaces when it ends: copy the model elsewhere first, or pick another --out")
        meta = os.path.join(out, "pretrain_config.json")
        if os.path.exists(out) and not os.path.isdir(out):
            raise ValueError(f"--out {out} is a file; give a folder (new, empty, or an earlier run of this recipe)")
        self.check_folder(out)
        if not os.path.exists(meta) and os.path.exists(os.path.join(out, "model")):
            # stage checkpoints placed there beforehand are taken up (experiments/stage2_variants.py seeds folders
            # so), but the model folder would be replaced when the run ends
            raise ValueError(f"--out {out} holds a model/ folder but no pretraining run (no pretrain_config.json); "
                             "the run would replace that folder when it ends: give a new or empty --out")
        if os.path.exists(meta):
            self.check_same_recipe(cfg, meta)
        os.makedirs(out, exist_ok=True)
        self.lock = open(os.path.join(out, ".lock"), "w")
        try:
            import fcntl
        except ImportError:  # not on POSIX: no lock
            fcntl = None
        if fcntl is not None:
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.lock.close()
                raise ValueError(f"another `gvu pretrain` is writing into {out} now; wait for it to end (or stop it) "
                                 "before resuming, or pick another --out") from None
        if not os.path.exists(meta):
            write_json_atomic(meta, asdict(cfg))

    @staticmethod
    def check_folder(out: str) -> None:
        """--out is new, empty, or a pretraining run's folder (stage checkpoints placed there beforehand count):
        never a saved model or a folder of other files. Scripts that seed a folder call this before copying."""
        from gvu.models.janus import WEIGHT_FILES

        weights = [w for w in WEIGHT_FILES if os.path.exists(os.path.join(out, w))]
        if weights:  # e.g. the shipped model, which keeps its recipe's pretrain_config.json beside its weights
            raise ValueError(f"--out {out} is a saved model (it holds {weights[0]}), not a pretraining run folder; "
                             "a run writes its model into OUT/model: pick a new or empty --out")
        foreign = sorted(n for n in (os.listdir(out) if os.path.isdir(out) else []) if not RunFolder.run_file(n))
        if foreign and not os.path.exists(os.path.join(out, "pretrain_config.json")):
            raise ValueError(f"--out {out} is not empty and is not a pretraining run (it holds {', '.join(foreign[:5])}"
                             f"{', ...' if len(foreign) > 5 else ''}): pick a new or empty --out")

    @staticmethod
    def run_file(name: str) -> bool:
        """What a run writes into its folder (stage checkpoints may be placed there beforehand to be taken up)."""
        return (name in ("config.json", "decoder.pt", "log.jsonl", "model", "pretrain_config.json", "tokenizer",
                         "vision.pt", ".lock")
                or (name.startswith("stage") and name.endswith(".pt")) or name.endswith(".tmp"))

    @staticmethod
    def check_same_recipe(cfg: PretrainConfig, meta: str) -> None:
        with open(meta) as f:
            run = json.load(f)
        # fields added since the run began take their defaults, which keep the old recipe; a speed-only field
        # (SPEED_ONLY) or a runtime field (RUNTIME) takes this command's value: a run begun before the field existed
        # still resumes, a run begun compiled resumes eagerly (--set torch_compile=false) and one begun at --threads 1
        # resumes at --threads 2
        free = SPEED_ONLY + RUNTIME
        saved = {**asdict(PretrainConfig()), **run, **{k: getattr(cfg, k) for k in free}}
        out = os.path.dirname(meta)
        if saved != asdict(cfg):
            raise ValueError(f"{out} holds a pretraining run with a different config; pick another --out "
                             f"or delete it. Differences: { {k: (saved.get(k), v) for k, v in asdict(cfg).items() if saved.get(k) != v} }")
        moved = {k: (run[k], getattr(cfg, k)) for k in free if k in run and run[k] != getattr(cfg, k)}
        if moved:
            print(f"resuming {out} with " + ", ".join(f"{k}={new} (begun with {old})" for k, (old, new) in moved.items()),
                  flush=True)

    def close(self) -> None:
        self.lock.close()  # releases the lock


def write_json_atomic(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(path + ".tmp", path)


def pretrain(preset: str | PretrainConfig, out: str, **overrides) -> str:
    """Run (or resume) every stage; returns the model directory. Bad input raises ValueError before any work."""
    cfg = resolve(preset, **overrides)
    folder = RunFolder(cfg, out)
    try:
        return run_stages(cfg, out)
    finally:
        folder.close()


def compile_works(device: str = "cpu") -> str:
    """'' when torch.compile can build and run here what the stages compile (convolutions, group norm, a linear layer,
    forward and backward under bf16 autocast), else why not (on the CPU inductor needs a C++ compiler)."""
    try:
        with torch.random.fork_rng(devices=[]):  # the probe's random weights leave the run's random streams alone
            net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.GroupNorm(4, 8), torch.nn.SiLU(),
                                      torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 2)).to(device)
        net.compile()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
            loss = net(torch.ones(2, 3, 4, 4, device=device)).float().sum()
        loss.backward()
        torch._dynamo.reset()
        return ""
    except Exception as e:  # inductor raises many kinds (no compiler, unsupported Python, ...)
        text = str(e).strip()
        return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def bf16_is_native(device: str = "cpu") -> bool:
    """Whether `device` computes bf16 matrix products in hardware: a CUDA GPU that supports bf16, or a CPU with
    AVX512-BF16 or AMX. Elsewhere torch converts in software: on the 2-core AMD EPYC (Zen 3, AVX2 only) a
    [2912, 768] x [768, 256] product took 955 ms in bf16 against 10 ms in fp32 (benchmarks/precision_speed.py)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        flags = [getattr(torch.cpu, f, None) for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        if all(f is None for f in flags):  # a torch without these probes: keep the recipe's setting
            return True
        return any(f() for f in flags if f is not None)
    return True


_BF16_CHECKED: dict[str, bool] = {}  # device -> bf16_is_native(device), checked once a process


def use_bf16(cfg: PretrainConfig) -> bool:
    """Whether a stage runs under bf16 autocast: the recipe asks (bf16) and the device computes bf16 natively. The
    first time it does not, says so; the stages then run in fp32 (a speed-only field: they learn the same up to float
    rounding)."""
    if not cfg.bf16:
        return False
    if cfg.device not in _BF16_CHECKED:
        _BF16_CHECKED[cfg.device] = native = bf16_is_native(cfg.device)
        if not native:
            print(f"bf16=true, but this {cfg.device} has no native bf16 (a CPU without AVX512-BF16 or AMX, or a GPU "
                  "without bf16), where bf16 autocast is many times slower than fp32: running the stages in fp32 "
                  "(same recipe; --set bf16=false says so and silences this)", flush=True)
    return _BF16_CHECKED[cfg.device]


_COMPILE_CHECKED: dict[str, str] = {}  # device -> compile_works(device), checked once a process


def use_compile(cfg: PretrainConfig) -> bool:
    """Whether a stage compiles: the recipe asks (torch_compile), it runs on the CPU (compiled stages were checked there
    only: benchmarks/vq_compile_check.py) and torch can compile. The first time it cannot, says so; the stages then run
    eagerly (a speed-only field: they learn the same)."""
    if not cfg.torch_compile or cfg.device != "cpu":
        return False
    if cfg.device not in _COMPILE_CHECKED:
        _COMPILE_CHECKED[cfg.device] = why = compile_works(cfg.device)
        if why:
            print(f"torch.compile does not work here ({why}); running the stages eagerly (slower, same recipe)",
                  flush=True)
    return not _COMPILE_CHECKED[cfg.device]


def run_stages(cfg: PretrainConfig, out: str) -> str:
    """The stages of a validated recipe in its (locked) run folder; returns the model directory."""
    torch.set_num_threads(cfg.threads)
    if cfg.from_model:
        spec, tok, config, model = from_saved(cfg, out)
        vq = model.model.vqmodel
        vq.load_state_dict(stage_decoder(cfg, out, config, vq.state_dict()))  # stage 1c trains a copy
    else:
        spec, tok, config = stage0(cfg, out)
        if cfg.vq_from and not os.path.exists(os.path.join(out, "stage1.pt")):
            atomic_save(vq_checkpoint(cfg.vq_from, cfg.vq_steps), os.path.join(out, "stage1.pt"))
        vq_state = stage_decoder(cfg, out, config, stage1(cfg, out, config))
        vision_state = stage_vision(cfg, out, config)
        model = stage2(cfg, out, spec, tok, config, vq_state, vision_state)
    model = stage3(cfg, out, spec, tok, model)
    model_dir = os.path.join(out, "model")
    save_model(model, tok, spec, model_dir)
    return model_dir
