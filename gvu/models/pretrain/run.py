"""A pretraining run: its folder (made, checked to hold this same recipe, locked), the stages in order, and the
finished model directory. Rerunning the same command resumes: each stage takes up its checkpoint."""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict

import torch

from gvu.config import ConfigError
from gvu.models import nano
from gvu.models.pretrain.config import BEFORE_FIELD, RUNTIME, SPEED_ONLY, PretrainConfig
from gvu.models.pretrain.files import atomic_save, save_config
from gvu.models.pretrain.image_stages import stage0, stage1, stage_decoder, stage_vision
from gvu.models.pretrain.lm_stages import stage2, stage3
from gvu.models.pretrain.presets import resolve
from gvu.run_lock import LOCK_NAME, RunLock
from gvu.runs import as_json, changed_fields, foreign_files, is_inside, listing, refuse_file

CONFIG_FILE = "pretrain_config.json"
# the guidance scale a saved nano model samples with by default: on single-object prompts a small model drew the right
# colour and shape more often at 3 than at 5, where guidance over-saturates it, or at 1 (no guidance)
DEFAULT_CFG_SCALE = 3.0


class RunFolder:
    """The run folder of a pretraining run, held for the run's length: made (or checked to hold this same recipe),
    locked against a second `gvu pretrain` writing into it at the same time, its recipe written atomically.
    Every refusal comes before anything in the folder changes."""

    def __init__(self, cfg: PretrainConfig, out: str):
        self.out = out
        model_dir = os.path.join(out, "model")
        if cfg.from_model and is_inside(cfg.from_model, model_dir):
            raise ConfigError(f"--from-model {cfg.from_model} lies in --out {out}'s model folder, which the run "
                              "replaces when it ends: copy the model elsewhere first, or pick another --out")
        meta = os.path.join(out, CONFIG_FILE)
        refuse_file(out, "run (new, empty, or an earlier run of this recipe)")
        self.check_folder(out)
        if not os.path.exists(meta) and os.path.exists(model_dir):
            # stage checkpoints placed there beforehand are taken up (experiments/stage2_variants.py seeds folders
            # so), but the model folder would be replaced when the run ends
            raise ConfigError(f"--out {out} holds a model/ folder but no pretraining run (no {CONFIG_FILE}); the run "
                              "would replace that folder when it ends: give a new or empty --out")
        if os.path.exists(meta):
            self.check_same_recipe(cfg, meta)
        os.makedirs(out, exist_ok=True)
        self.lock = RunLock(out, "another `gvu pretrain` is writing into it").acquire()
        if not os.path.exists(meta):
            from gvu.run_io import save_json

            save_json(out, CONFIG_FILE, asdict(cfg))

    @staticmethod
    def check_folder(out: str) -> None:
        """--out is new, empty, or a pretraining run's folder (stage checkpoints placed there beforehand count):
        never a saved model or a folder of other files. Scripts that seed a folder call this before copying."""
        from gvu.models.janus import WEIGHT_FILES

        weights = [w for w in WEIGHT_FILES if os.path.exists(os.path.join(out, w))]
        if weights:  # e.g. the shipped model, which keeps its recipe's pretrain_config.json beside its weights
            raise ConfigError(f"--out {out} is a saved model (it holds {weights[0]}), not a pretraining run folder; "
                              "a run writes its model into OUT/model: pick a new or empty --out")
        foreign = foreign_files(out, RunFolder.run_file)
        if foreign and not os.path.exists(os.path.join(out, CONFIG_FILE)):
            raise ConfigError(f"--out {out} is not empty and is not a pretraining run (it holds {listing(foreign)}): "
                              "pick a new or empty --out")

    @staticmethod
    def run_file(name: str) -> bool:
        """What a run writes into its folder (stage checkpoints may be placed there beforehand to be taken up)."""
        return (name in ("config.json", "decoder.pt", "log.jsonl", "model", CONFIG_FILE, "tokenizer", "vision.pt",
                         LOCK_NAME)
                or (name.startswith("stage") and name.endswith(".pt")) or name.endswith(".tmp"))

    @staticmethod
    def check_same_recipe(cfg: PretrainConfig, meta: str) -> None:
        """The run in meta's folder has this recipe. A field added since the run began takes the value that leaves it
        off (BEFORE_FIELD) or else its default, which keep the old recipe; a speed-only field (SPEED_ONLY) or a runtime field
        (RUNTIME) takes this command's value, so a run begun compiled resumes eagerly (--set torch_compile=false) and
        one begun at --threads 1 resumes at --threads 2."""
        from gvu.settings import read_settings_file

        run = read_settings_file(meta, f"--out {os.path.dirname(meta)}", "PretrainConfig")
        free = SPEED_ONLY + RUNTIME
        want = as_json(cfg)
        out = os.path.dirname(meta)
        diff = changed_fields({**as_json(PretrainConfig()), **BEFORE_FIELD, **run}, want, free)
        if diff:
            raise ConfigError(f"{out} holds a pretraining run with a different config; pick another --out or "
                              f"delete it. Differences (the run's, this command's): {diff}")
        moved = {k: (run[k], getattr(cfg, k)) for k in free if k in run and run[k] != getattr(cfg, k)}
        if moved:
            print(f"resuming {out} with " + ", ".join(f"{k}={new} (begun with {old})" for k, (old, new) in moved.items()),
                  flush=True)

    def close(self) -> None:
        self.lock.release()


def save_model(model, tok, spec, out_dir: str) -> None:
    """The whole model directory, loadable offline with from_pretrained (safetensors, tokenizer, processor), written
    beside it and renamed into place."""
    from gvu.atomic import fsync_folder
    from gvu.models.janus import JanusBackendConfig

    tmp = out_dir + ".tmp"
    if os.path.exists(tmp):  # left by a crash mid-save
        shutil.rmtree(tmp)
    model.eval().cpu()
    model.save_pretrained(tmp, safe_serialization=True)
    nano.build_processor(spec, tok).save_pretrained(tmp)
    JanusBackendConfig(default_cfg_scale=DEFAULT_CFG_SCALE).save(tmp)
    fsync_folder(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def vq_checkpoint(src: str, vq_steps: int) -> dict:
    """A finished stage-1 checkpoint holding the VQ weights of the saved model src (as fp32)."""
    from safetensors.torch import load_file

    prefix = "model.vqmodel."
    weights = load_file(os.path.join(src, "model.safetensors"))
    state = {k[len(prefix):]: v.float() for k, v in weights.items() if k.startswith(prefix)}
    if not state:
        raise ConfigError(f"{src}/model.safetensors holds no {prefix}* weights: is it a Janus model?")
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


def pretrain(preset: str | PretrainConfig, out: str, **overrides) -> str:
    """Run (or resume) every stage; returns the model directory. Bad input raises ConfigError before any work."""
    cfg = resolve(preset, **overrides)
    folder = RunFolder(cfg, out)
    try:
        return run_stages(cfg, out)
    finally:
        folder.close()
