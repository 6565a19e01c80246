"""`gvu generate`: sample a model directory, or a trained run at one of its checkpoints, into a benchmark's folder.

Two stages, so that every user error is found before a model loads:
  plan_generation   reads and checks the prompts, the layout, the model or run, the sampling settings and the
                    output folder (new, a resume of the same generation, or a replacement under --overwrite);
  run_generation    loads the model, deals the prompts that are not yet complete to the ranks, samples them batch by
                    batch, and writes each prompt's files atomically (gvu/layouts.py) as soon as its K images exist.

Seeds. Image k of prompt i is sampled with row id i * ROW_STRIDE + k (gvu.sampling.row_uniforms draws a row's
random numbers from (seed, row id, position) alone), so it depends only on (seed, i, k): not on the batch size, the
number of ranks, --limit, or which prompts a resume skips. Images are decoded one at a time for the same reason: a
batched convolution's float sums depend on the batch's shape, and a 1e-6 change rounds a pixel differently. On the
CPU in float32 this makes the PNG bytes identical (tests/test_generate.py); on a GPU the matrix kernels chosen for a
batch's shape can change logits in their last bits, so a token may differ between batch sizes.

Resume. generation.json records what made the folder (model or run and step, sampling settings with the seed,
layout, K, the prompts' digest, dtype, device type); a second call with the same identity generates only the prompts
whose files are not complete, and any other identity is refused unless --overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from gvu.config import ConfigError, SamplingConfig
from gvu.errors import UserError
from gvu.layouts import (GENERATION_FILE, PROMPTS_FILE, auto_layout, images_per_prompt, is_complete,
                         is_generated_entry, prompts_file_text, remove_leftovers, write_prompt, write_text_atomic)
from gvu.prompt_sources import PromptItem, PromptSource, read_source

ROW_STRIDE = 1 << 16  # row id of image k of prompt i: i * ROW_STRIDE + k (K < 65536 images a prompt)
DTYPES = ("float32", "bfloat16")


def row_id(index: int, k: int) -> int:
    return index * ROW_STRIDE + k


# ---------------------------------------------------------------------------------------------- what to sample

@dataclass(frozen=True)
class ModelRef:
    """What `gvu generate` samples, checked without reading weights."""

    kind: str  # "model" (a checkpoint directory) or "run" (a `gvu train` run at one checkpoint)
    path: str  # the directory given
    step: int | None  # the run's checkpoint step (None for a model directory)
    identity: dict  # what generation.json records about it, and a resume compares
    sampling: SamplingConfig  # the run's sampling settings, or SamplingConfig's defaults for a model directory
    device: str | None  # the run's device (None for a model directory: the caller picks)
    dtype: str | None  # the run's dtype (None for a model directory)

    @property
    def label(self) -> str:
        return f"run {self.path} at step {self.step}" if self.kind == "run" else f"model {self.path}"


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def model_dir_ref(path: str) -> ModelRef:
    """A checkpoint directory its backend can load (config and tokenizer checked, weights not read)."""
    from gvu.models.janus import WEIGHT_FILES
    from gvu.models.registry import check_model

    if not os.path.isdir(path):
        raise UserError(f"--model {path} is not a directory: give a checkpoint directory in transformers' format")
    try:
        check_model(path)
    except ValueError as e:
        raise UserError(f"--model: {e}") from None
    # the directory and what identifies its contents cheaply: config, weight sizes, and an export's run and step
    weights = {f: os.path.getsize(os.path.join(path, f)) for f in sorted(os.listdir(path))
               if f in WEIGHT_FILES or re.fullmatch(r"model-\d+-of-\d+\.safetensors", f)}
    identity = {"model": os.path.realpath(path), "config_sha256": _sha256_file(os.path.join(path, "config.json")),
                "weight_bytes": weights}
    export_file = os.path.join(path, "gvu_export.json")
    if os.path.exists(export_file):
        with open(export_file) as f:
            identity["export"] = {k: v for k, v in json.load(f).items() if k in ("run", "step")}
    return ModelRef("model", path, None, identity, default_sampling(path), None, None)


def default_sampling(path: str) -> SamplingConfig:
    """A model directory's sampling defaults: SamplingConfig's (guidance at the backend's scale) for Janus; for X-Omni
    the sampling of the xomni-en preset, which holds the official GvU generation settings (no guidance, min-p 0.03)."""
    from gvu.models.registry import XOMNI, model_type

    if model_type(path) != XOMNI:
        return SamplingConfig()
    preset = Path(__file__).resolve().parent.parent / "configs" / "xomni-en.json"
    with open(preset) as f:
        return SamplingConfig(**json.load(f)["sampling"])


def run_ref(run_dir: str, step: int | None) -> ModelRef:
    """A `gvu train` run at `step` (default: its latest checkpoint); its base model checked, no weights read."""
    from gvu import checkpoint
    from gvu.models.registry import check_model
    from gvu.train import read_run_config

    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise UserError(f"--run {run_dir} holds no run (no config.json): give the --out folder of a `gvu train` run")
    try:
        cfg = read_run_config(run_dir)
    except (ValueError, TypeError) as e:
        raise UserError(f"--run {run_dir}: its config.json is not a gvu train config ({e})") from None
    steps = [n for n, _ in checkpoint.step_folders(run_dir)]
    if not steps:
        raise UserError(f"--run {run_dir} has no checkpoint yet (checkpoints/step_*): train it further, or wait for "
                        "its first checkpoint")
    if step is None:  # what `latest` names, else the newest intact checkpoint (as a resume would pick)
        latest = checkpoint.latest(run_dir)
        newest = checkpoint.newest_intact(run_dir)
        step = (int(checkpoint.STEP_DIR.fullmatch(os.path.basename(latest)).group(1)) if latest
                else newest[0] if newest else steps[-1])
    elif step not in steps:
        raise UserError(f"--step {step}: run {run_dir} has no checkpoint of that step; its checkpoints are at steps "
                        f"{', '.join(map(str, steps))}")
    try:
        check_model(cfg.model)
    except ValueError as e:
        raise UserError(f"--run {run_dir}: its base model {cfg.model!r} cannot be loaded: {e}") from None
    identity = {"run": os.path.realpath(run_dir), "step": step,
                "config_sha256": _sha256_file(os.path.join(run_dir, "config.json"))}
    return ModelRef("run", run_dir, step, identity, cfg.sampling, cfg.device, cfg.dtype)


def load_backend(ref: ModelRef, device: str, dtype: str):
    """The backend of a ModelRef (gvu.models.registry picks it by the checkpoint's model type), on `device` in
    `dtype`."""
    import torch

    from gvu.models import registry
    from gvu.train import load_trained

    if ref.kind == "run":
        return load_trained(ref.path, ref.step, device=device, dtype=dtype)
    return registry.load_backend(ref.path, device=device, dtype=getattr(torch, dtype))


def resolve_sampling(base: SamplingConfig, sets: list[str], seed: int) -> SamplingConfig:
    """base with --set sampling.FIELD=VALUE changes (typed and checked as gvu train's --set), and the seed."""
    from gvu.settings import apply_dict, coerce

    known = {f.name: f for f in fields(SamplingConfig)}
    changes: dict = {}
    for s in sets:
        key, sep, value = s.partition("=")
        name = key[len("sampling."):] if key.startswith("sampling.") else None
        if not sep or name is None:
            raise UserError(f"--set {s!r}: expected sampling.FIELD=VALUE (fields: {', '.join(known)})")
        if name == "seed":
            raise UserError("--set sampling.seed: give the seed with --seed")
        if name not in known:
            raise UserError(f"--set {key}: unknown sampling setting {name!r}; known: {', '.join(known)}")
        changes[name] = value
    try:  # the typing rules of gvu train's --set; a bad value is a ConfigError naming it
        typed = {k: coerce(v, known[k].type, f"--set sampling.{k}") for k, v in changes.items()}
        cfg = replace(apply_dict(base, typed, "--set sampling"), seed=seed)
        cfg.validate()
    except ConfigError as e:
        raise UserError(f"sampling settings: {e}") from None
    return cfg


@dataclass(frozen=True)
class GenerateRequest:
    """Everything `gvu generate` does, checked (plan_generation) before any model loads."""

    model: ModelRef
    source: PromptSource
    items: tuple[PromptItem, ...]  # the prompts to sample: the source's, or its first --limit
    layout: str  # geneval | genevalpp | dpg
    images_per_prompt: int  # K
    sampling: SamplingConfig  # seed included
    out: Path
    batch_size: int  # images sampled at once on each rank
    device: str
    dtype: str
    overwrite: bool = False

    def identity(self) -> dict:
        """What must match for a resume: not the batch size, rank count or --limit, which do not change an image."""
        return json.loads(json.dumps({
            "model": self.model.identity, "layout": self.layout, "images_per_prompt": self.images_per_prompt,
            "sampling": asdict(self.sampling), "dtype": self.dtype, "device_type": self.device.split(":")[0],
            "prompts": {"kind": self.source.kind, "count": len(self.source.items), "sha256": self.source.digest}}))


def plan_generation(*, prompts: str, out: str, layout: str = "auto", model: str | None = None, run: str | None = None,
                    step: int | None = None, images: int | None = None, batch_size: int = 16,
                    sets: list[str] | None = None, limit: int | None = None, seed: int = 0,
                    device: str | None = None, dtype: str | None = None, overwrite: bool = False) -> GenerateRequest:
    """Check everything a generation needs, reading no weights; raise a UserError that says how to fix a problem."""
    if (model is None) == (run is None):
        raise UserError("give either --model DIR or --run RUN")
    if step is not None and run is None:
        raise UserError("--step goes with --run (a model directory has no steps)")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 image (got {batch_size})")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 prompt (got {limit})")
    if layout != "auto" and layout not in ("geneval", "genevalpp", "dpg"):
        raise UserError(f"unknown layout {layout!r}; the layouts are geneval, genevalpp, dpg or auto")
    source = read_source(prompts)
    layout = auto_layout(source) if layout == "auto" else layout
    k = images_per_prompt(layout, source, images)
    ref = model_dir_ref(model) if model is not None else run_ref(run, step)
    sampling = resolve_sampling(ref.sampling, sets or [], seed)
    device, dtype = _device_and_dtype(device or ref.device, dtype or ref.dtype)
    req = GenerateRequest(ref, source, source.items[:limit] if limit else source.items, layout, k, sampling, Path(out),
                          batch_size, device, dtype, overwrite)
    folder_plan(req)  # the output folder's checks; run_generation repeats them before it writes
    return req


def _device_and_dtype(device: str | None, dtype: str | None) -> tuple[str, str]:
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UserError(f"--device must be cpu, cuda or cuda:N (got {device!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device}, but this torch sees no GPU (torch {torch.__version__}); use --device cpu")
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if dtype not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)} (got {dtype!r})")
    return device, dtype


# ---------------------------------------------------------------------------------------------- the output folder

def read_generation_file(out: Path) -> dict | None:
    path = out / GENERATION_FILE
    if not path.exists():
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError:
        raise UserError(f"{path} is not valid JSON: the folder's record of what made it is damaged; pass "
                        "--overwrite to generate the folder anew, or pick another --out") from None


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {json.dumps(old.get(k))[:120]} there, {json.dumps(new.get(k))[:120]} now" for k in keys)


def folder_plan(req: GenerateRequest) -> str:
    """What to do with --out, changing nothing: "new", "resume" (the same generation) or "replace" (--overwrite)."""
    out = req.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    for inp, what in ((req.source.path, "prompts"), (req.model.path, "model or run")):
        if Path(os.path.realpath(inp)).is_relative_to(os.path.realpath(out)):
            raise UserError(f"--out {out} holds this command's {what} {inp}; pick another --out")
    saved = read_generation_file(out) if not req.overwrite else None
    if saved is not None:
        if saved.get("identity") == req.identity():
            return "resume"
        raise UserError(f"--out {out} holds a generation by another model or with other settings "
                        f"({_differences(saved.get('identity') or {}, req.identity())}); pass --overwrite to replace "
                        "it, or pick another --out")
    foreign = [p.name for p in out.iterdir() if not is_generated_entry(req.layout, p)]
    if foreign:
        raise UserError(f"--out {out} holds files that `gvu generate --layout {req.layout}` does not write "
                        f"({', '.join(sorted(foreign)[:5])}); pick a new or empty folder")
    if not req.overwrite:
        raise UserError(f"--out {out} holds images but no {GENERATION_FILE} (not made by gvu generate, so it cannot "
                        "be resumed); pass --overwrite to replace them, or pick another --out")
    return "replace"


def versions() -> dict:
    import torch
    import transformers

    from gvu import __version__
    return {"gvu": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def generation_record(req: GenerateRequest, complete: int, extra: dict | None = None) -> dict:
    return {"layout": req.layout, "identity": req.identity(), "model": req.model.label, "prompts_path": req.source.path,
            "limit": len(req.items) if len(req.items) < len(req.source.items) else None,
            "batch_size": req.batch_size, "versions": versions(),
            "counts": {"prompts": len(req.source.items), "requested": len(req.items), "complete": complete,
                       "images_per_prompt": req.images_per_prompt, "images": complete * req.images_per_prompt},
            **(extra or {})}


def prepare_folder(req: GenerateRequest, extra: dict) -> None:
    """Rank 0, once the model has loaded: make (or replace) --out, record the generation, remove tmp leftovers."""
    plan = folder_plan(req)  # again: the folder may have changed while the model loaded
    if plan == "replace":
        shutil.rmtree(req.out)
    req.out.mkdir(parents=True, exist_ok=True)
    remove_leftovers(req.out)
    if req.layout != "geneval":
        write_text_atomic(req.out / PROMPTS_FILE, prompts_file_text(req.layout, req.source.items))
    if plan != "resume":
        write_text_atomic(req.out / GENERATION_FILE, json.dumps(generation_record(req, 0, extra), indent=1) + "\n")


# ---------------------------------------------------------------------------------------------- sampling

def decode_pixels(backend, tokens, prompts: list[str], seeds):
    """Image tokens [M, N] -> uint8 [M, H, W, 3], one image at a time (see the module docstring). prompts (M texts)
    and seeds [M] feed decoders that read them (X-Omni's FLUX decoder); Janus's VQ decoder ignores both."""
    import numpy as np

    from gvu.reward import to_uint8

    return np.concatenate([to_uint8(backend.decode_images(tokens[j:j + 1], prompts[j:j + 1], seeds[j:j + 1]))
                           for j in range(len(tokens))])


def sample_rows(backend, rows: list[tuple[PromptItem, int]], sampling: SamplingConfig):
    """Images of (prompt, k) rows: uint8 [M, H, W, 3], each seeded by its row id alone (token draws and, for a
    decoder that draws noise, its seed: gvu.models.adapter.decode_seeds)."""
    import torch

    from gvu.models.adapter import decode_seeds

    ids = torch.tensor([row_id(it.index, k) for it, k in rows], dtype=torch.long)
    prompts = [it.prompt for it, _ in rows]
    tokens = backend.sample_image_tokens(prompts, sampling, ids)
    return decode_pixels(backend, tokens, prompts, decode_seeds(sampling.seed, ids))


@dataclass(frozen=True)
class GenerationResult:
    out: Path
    requested: int  # prompts asked for (after --limit)
    skipped: int  # prompts already complete (a resume)
    generated: int  # prompts this call wrote, all ranks together
    images: int  # images this call sampled, all ranks together
    seconds: float  # sampling and writing, after the model loaded

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def run_generation(req: GenerateRequest, backend=None, progress: bool = True) -> GenerationResult:
    """Load the model (unless a backend is given), then sample every incomplete prompt of req into req.out. Under
    torchrun every rank calls this; the pending prompts are dealt to the ranks by stride (gvu.dist.rank_slice)."""
    import numpy as np
    from tqdm import tqdm

    from gvu import dist

    info = dist.init(req.device)
    done = folder_plan(req) == "resume" and all(is_complete(req.layout, req.out, it, req.images_per_prompt)
                                                for it in req.items)
    dist.barrier()  # every rank has looked at the folder before rank 0 changes it
    if done:
        return GenerationResult(req.out, len(req.items), len(req.items), 0, 0, 0.0)  # nothing to do: no model loads
    if backend is None:
        backend = load_backend(req.model, str(info.device), req.dtype)
    try:
        backend.check_prompts([it.prompt for it in req.items])
    except ValueError as e:
        raise UserError(f"--prompts {req.source.path}: {e}") from None
    extra = {"cfg_scale_used": req.sampling.cfg_scale if req.sampling.cfg_scale is not None
             else backend.default_cfg_scale, "image_size": backend.image_size, "world_size": info.world}
    if info.is_main:
        prepare_folder(req, extra)
    dist.barrier()
    pending = [it for it in req.items if not is_complete(req.layout, req.out, it, req.images_per_prompt)]
    dist.barrier()  # every rank has listed the pending prompts before any rank writes one
    mine = dist.rank_slice(pending, info.rank, info.world)
    rows = [(it, k) for it in mine for k in range(req.images_per_prompt)]
    t0 = time.time()
    bar = tqdm(total=len(mine), desc="gvu generate" + (f" (rank 0 of {info.world})" if info.world > 1 else ""),
               unit="prompt", disable=not (progress and info.is_main))
    held: dict[int, list] = {}
    for s in range(0, len(rows), req.batch_size):
        chunk = rows[s:s + req.batch_size]
        for (it, k), px in zip(chunk, sample_rows(backend, chunk, req.sampling)):
            held.setdefault(it.index, [None] * req.images_per_prompt)[k] = px
            if all(x is not None for x in held[it.index]):
                write_prompt(req.layout, req.out, it, np.stack(held.pop(it.index)))
                bar.update(1)
    bar.close()
    seconds = time.time() - t0
    dist.barrier()
    result = GenerationResult(req.out, len(req.items), len(req.items) - len(pending), len(pending),
                              len(pending) * req.images_per_prompt, seconds)
    if info.is_main:
        complete = sum(is_complete(req.layout, req.out, it, req.images_per_prompt) for it in req.source.items)
        record = generation_record(req, complete, {**extra, "last_call": {
            "generated": result.generated, "skipped": result.skipped, "seconds": round(seconds, 2),
            "images_per_s": round(result.images_per_s, 3)}})
        write_text_atomic(req.out / GENERATION_FILE, json.dumps(record, indent=1) + "\n")
    return result
