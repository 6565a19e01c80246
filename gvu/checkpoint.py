"""Atomic checkpoints without pickle: one folder per step, checked by a manifest on load.

A checkpoint folder (checkpoints/step_NNNNNN) holds
  trainable.safetensors   the weights training changes (LoRA adapters, or every trainable weight)
  optimizer.safetensors   the optimiser state's tensors (Adam's moments and step counts), flattened
  extra.safetensors       extra tensors (the EMA judge's weights), when there are any
  state.json              step, counters, RNG states as plain lists, and the optimiser state's structure
                          (param groups, which tensor goes where) with the tensors named, not stored
  manifest.json           the size and sha256 of each file above
Loading reads only safetensors and JSON, so it runs no code from the run folder (torch.load of a pickle can run
any). Checkpoints of the older format (state.pt, a pickle) load only when the user says they trust them.

A folder is written under a temporary name, flushed to disk (fsync) and renamed into place, so neither a crash
mid-save nor a power loss just after it leaves a half-written checkpoint; `latest` is a small file naming the
newest complete one, replaced the same way. Load verifies the manifest, so a file truncated or changed since is an
error that names the newest intact checkpoint instead of weights that load wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import sys

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gvu.atomic import fsync, fsync_folder
from gvu.errors import UserError

FORMAT = 2  # state.json's format; checkpoints without a manifest and with state.pt are format 1 (pickle)
STEP_DIR = re.compile(r"step_(\d{6,})")  # a checkpoint folder's name: only these, directly inside checkpoints/
MANIFEST, STATE, WEIGHTS, OPTIMIZER, EXTRA, LEGACY_STATE = ("manifest.json", "state.json", "trainable.safetensors",
                                                            "optimizer.safetensors", "extra.safetensors", "state.pt")
TRUST_FLAG = "--trust-checkpoint-pickle"


class CheckpointCorrupt(UserError):
    """A checkpoint that cannot be loaded as written (missing, truncated or changed files, a bad `latest`)."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changes (LoRA adapters, or every trainable weight for full fine-tuning)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_states() -> dict:
    """Python's, NumPy's and torch's global RNG states as plain data (lists, ints, floats, strings): it can be
    written as JSON and read back without unpickling anything."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(mt), gauss],
            "numpy": [name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached)],
            "torch": torch.get_rng_state().tolist()}


def python_rng_state(rng: random.Random) -> list:
    """A random.Random's state as plain data (see rng_states); random.Random.setstate(python_rng_tuple(s)) undoes it."""
    version, mt, gauss = rng.getstate()
    return [version, list(mt), gauss]


def python_rng_tuple(state) -> tuple:
    """The inverse of python_rng_state: the tuple random.Random.setstate takes."""
    version, mt, gauss = state
    return (version, tuple(mt), gauss)


def set_rng_states(s: dict) -> None:
    random.setstate(python_rng_tuple(s["python"]))
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(s["torch"], dtype=torch.uint8))


# ----------------------------------------------------------------------------------------------- nested state as JSON + tensors

_MARKERS = ("__tensor__", "__tuple__", "__float__", "__dict__")


def encode_tree(obj, tensors: dict[str, torch.Tensor]):
    """A nested state (dicts, lists, tuples, tensors, numbers, strings, None; an optimiser's state_dict) as
    JSON-safe data: each tensor moves into `tensors` under a new name and leaves {"__tensor__": name} behind;
    tuples, non-finite floats and dicts with non-string keys are tagged so that decode_tree restores them exactly."""
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [encode_tree(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [encode_tree(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not (len(obj) == 1 and next(iter(obj)) in _MARKERS):
            return {k: encode_tree(v, tensors) for k, v in obj.items()}
        return {"__dict__": [[encode_tree(k, tensors), encode_tree(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"cannot write a {type(obj).__name__} into a checkpoint's state.json")


def decode_tree(obj, tensors: dict[str, torch.Tensor]):
    """The inverse of encode_tree. A name that `tensors` lacks is a CheckpointCorrupt."""
    if isinstance(obj, list):
        return [decode_tree(x, tensors) for x in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (key, value), = obj.items()
        if key == "__tensor__":
            if value not in tensors:
                raise CheckpointCorrupt(f"state.json names tensor {value!r}, which optimizer.safetensors lacks")
            return tensors[value]
        if key == "__tuple__":
            return tuple(decode_tree(x, tensors) for x in value)
        if key == "__float__":
            return float(value)
        if key == "__dict__":
            return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in value}
    return {k: decode_tree(v, tensors) for k, v in obj.items()}


# ----------------------------------------------------------------------------------------------- save

def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str) -> None:
    """manifest.json: {"format", "files": {name: {"size", "sha256"}}} for every file in the folder."""
    files = {n: {"size": os.path.getsize(os.path.join(folder, n)), "sha256": sha256_of(os.path.join(folder, n))}
             for n in sorted(os.listdir(folder)) if n != MANIFEST}
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"format": FORMAT, "files": files}, f, indent=1)


def step_dir(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step_{step:06d}")


def save(run_dir: str, step: int, model: torch.nn.Module, optimizer, extra: dict | None = None,
         extra_tensors: dict[str, torch.Tensor] | None = None, optimizer_state: dict | None = None) -> str:
    """optimizer_state: the optimiser state to write instead of optimizer.state_dict() (FSDP: the full,
    name-keyed state gathered from every rank by gvu.dist.full_optimizer_state)."""
    final = step_dir(run_dir, step)
    tmp = final + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        save_file(trainable_state(model), os.path.join(tmp, WEIGHTS))
        if extra_tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, os.path.join(tmp, EXTRA))
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_tree = encode_tree(optimizer_state if optimizer_state is not None else optimizer.state_dict(), opt_tensors)
        save_file(opt_tensors, os.path.join(tmp, OPTIMIZER))
        with open(os.path.join(tmp, STATE), "w") as f:
            json.dump({"format": FORMAT, "step": step, "extra": encode_tree(extra or {}, {}), "rng": rng_states(),
                       "optimizer": opt_tree}, f)
        write_manifest(tmp)
        fsync_folder(tmp)
    except BaseException:  # an error, Ctrl-C or SIGTERM (gvu.cli) mid-save: no half-written folder is left
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    folder = os.path.join(run_dir, "checkpoints")
    fsync(folder)  # the new folder's name is on disk before `latest` names it
    latest_tmp = os.path.join(folder, "latest.tmp")
    with open(latest_tmp, "w") as f:
        f.write(os.path.basename(final))
        f.flush()
        os.fsync(f.fileno())
    os.replace(latest_tmp, os.path.join(folder, "latest"))
    fsync(folder)
    return final


def clean_stale(run_dir: str) -> list[str]:
    """Remove what an interrupted save left in checkpoints/ (step_*.tmp folders, latest.tmp); returns their names.
    Only the run's one writer may call this (gvu.run_lock)."""
    folder = os.path.join(run_dir, "checkpoints")
    removed = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if name == "latest.tmp" or (name.endswith(".tmp") and STEP_DIR.fullmatch(name[:-4])):
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
            removed.append(name)
    return removed


# ----------------------------------------------------------------------------------------------- find and check

def step_folders(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every checkpoint folder in the run, oldest first."""
    folder = os.path.join(run_dir, "checkpoints")
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        m = STEP_DIR.fullmatch(name)
        path = os.path.join(folder, name)
        if m and os.path.isdir(path) and not os.path.islink(path):
            found.append((int(m.group(1)), path))
    return sorted(found)


def is_legacy(ckpt: str) -> bool:
    """A checkpoint of the older format: its state is a pickle (state.pt) and it has no manifest."""
    return os.path.exists(os.path.join(ckpt, LEGACY_STATE)) and not os.path.exists(os.path.join(ckpt, MANIFEST))


_intact: dict[str, tuple] = {}  # checkpoints verified in this process, by path -> the files' (name, size, mtime)


def _signature(ckpt: str, names) -> tuple:
    return tuple((n, os.stat(os.path.join(ckpt, n)).st_size, os.stat(os.path.join(ckpt, n)).st_mtime_ns) for n in names)


def problem_with(ckpt: str) -> str | None:
    """What is wrong with a (new-format) checkpoint folder, or None when its manifest and files agree."""
    if is_legacy(ckpt):
        return f"it is in the old format ({LEGACY_STATE}, a pickle), which loads only with {TRUST_FLAG}"
    path = os.path.join(ckpt, MANIFEST)
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
        files = manifest["files"]
        if not isinstance(files, dict) or not {STATE, WEIGHTS, OPTIMIZER} <= files.keys():
            return f"{MANIFEST} does not list {STATE}, {WEIGHTS} and {OPTIMIZER}"
        for name in files:
            if os.path.basename(name) != name or name in (".", ".."):
                return f"{MANIFEST} names {name!r}, which is not a file of this folder"
        signature = _signature(ckpt, files)
    except FileNotFoundError as e:
        return f"{os.path.basename(e.filename or path)} is missing"
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        return f"{MANIFEST} is unreadable ({type(e).__name__}: {e})"
    if _intact.get(ckpt) == signature:
        return None
    for name, want in files.items():
        p = os.path.join(ckpt, name)
        size = os.path.getsize(p)
        if size != want.get("size"):
            return f"{name} has {size} bytes, but {want.get('size')} were written (truncated or replaced)"
        if sha256_of(p) != want.get("sha256"):
            return f"{name} has changed since it was written (its sha256 differs from the manifest's)"
    _intact[ckpt] = signature
    return None


def newest_intact(run_dir: str, trust_pickle: bool = False) -> tuple[int, str] | None:
    for step, path in reversed(step_folders(run_dir)):
        if (trust_pickle and is_legacy(path)) or problem_with(path) is None:
            return step, path
    return None


def resume_hint(run_dir: str, trust_pickle: bool = False) -> str:
    """How to go on from the newest intact checkpoint (or that there is none)."""
    found = newest_intact(run_dir, trust_pickle)
    if found is None:
        return ("no intact checkpoint is left in it: start again in a new --out (or replace the run with --overwrite)")
    return (f"the newest intact checkpoint is step {found[0]}: resume from it with "
            f"`gvu train --out {run_dir} --resume --resume-from {found[0]}`")


def latest(run_dir: str) -> str | None:
    """The checkpoint folder `latest` names (checked to be a step folder directly inside checkpoints/), or None
    when there is no `latest` file. Its files are not checked here (problem_with, resume_point)."""
    path = os.path.join(run_dir, "checkpoints", "latest")
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            name = f.read(256).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointCorrupt(f"{path} is unreadable ({e}); {resume_hint(run_dir)}") from None
    if not STEP_DIR.fullmatch(name):
        raise CheckpointCorrupt(f"{path} names {name[:80]!r}, which is not a checkpoint folder of this run (step_NNNNNN, "
                                f"directly inside checkpoints/); {resume_hint(run_dir)}")
    ckpt = os.path.join(run_dir, "checkpoints", name)
    if not os.path.isdir(ckpt) or os.path.islink(ckpt):
        raise CheckpointCorrupt(f"{path} names {name}, which does not exist; {resume_hint(run_dir)}")
    return ckpt


def resume_point(run_dir: str, resume_from: int | None = None, trust_pickle: bool = False) -> str | None:
    """The checkpoint `gvu train --resume` continues from: step `resume_from` when given, else the one `latest`
    names, else (no `latest`) the newest intact one, announced on stderr. None when the run has no checkpoint
    at all (a run stopped before its first: it starts again from step 0). Raises CheckpointCorrupt (naming the newest
    intact checkpoint and the command that resumes from it) rather than ever passing over existing checkpoints."""
    if resume_from is not None:
        ckpt = step_dir(run_dir, resume_from)
        if not os.path.isdir(ckpt):
            have = ", ".join(str(s) for s, _ in step_folders(run_dir)) or "none"
            raise UserError(f"--resume-from {resume_from}: {run_dir} has no checkpoint of step {resume_from} "
                            f"(its checkpoints' steps: {have})")
    else:
        ckpt = latest(run_dir)
        if ckpt is None:
            if not step_folders(run_dir):
                return None
            found = newest_intact(run_dir, trust_pickle)
            if found is None:
                raise CheckpointCorrupt(f"{run_dir}/checkpoints/latest is missing and none of its checkpoints is "
                                        f"intact ({problem_with(step_folders(run_dir)[-1][1])}); "
                                        f"{resume_hint(run_dir, trust_pickle)}")
            print(f"[gvu] {run_dir}/checkpoints/latest is missing: resuming from the newest intact checkpoint, "
                  f"step {found[0]}", file=sys.stderr)
            return found[1]
    if is_legacy(ckpt):
        if not trust_pickle:
            raise UserError(f"checkpoint {ckpt} is in gvu's old format: its state ({LEGACY_STATE}) is a pickle, and "
                            "unpickling a file can run any code in it. If you made this run and trust it, resume with "
                            f"{TRUST_FLAG} (the checkpoints written after it are in the new format, which runs no code)")
        return ckpt
    problem = problem_with(ckpt)
    if problem:
        which = "checkpoint" if resume_from is not None else "latest checkpoint"
        raise CheckpointCorrupt(f"the {which} {ckpt} is corrupt: {problem}. {resume_hint(run_dir, trust_pickle)}")
    return ckpt


# ----------------------------------------------------------------------------------------------- load

def read_state(ckpt: str, trust_pickle: bool = False) -> dict:
    """{"step", "extra", "rng", "optimizer"} of a checkpoint, from state.json + optimizer.safetensors, after checking
    the manifest. An old-format checkpoint (state.pt) is unpickled only with trust_pickle, with a warning."""
    if is_legacy(ckpt):
        return _read_legacy_state(ckpt, trust_pickle)
    problem = problem_with(ckpt)
    if problem:
        raise CheckpointCorrupt(f"checkpoint {ckpt} is corrupt: {problem}. {resume_hint(os.path.dirname(os.path.dirname(ckpt)))}")
    try:
        with open(os.path.join(ckpt, STATE), "rb") as f:
            state = json.loads(f.read().decode("utf-8"))
        tensors = load_file(os.path.join(ckpt, OPTIMIZER))
        out = {"step": int(state["step"]), "extra": decode_tree(state["extra"], {}), "rng": state["rng"],
               "optimizer": decode_tree(state["optimizer"], tensors)}
    except CheckpointCorrupt:
        raise
    except (OSError, ValueError, KeyError, TypeError, RecursionError, SafetensorError) as e:
        raise CheckpointCorrupt(f"checkpoint {ckpt}: {STATE} or {OPTIMIZER} is unreadable ({type(e).__name__}: "
                                f"{e})") from None
    return out


_warned: set[str] = set()


def _read_legacy_state(ckpt: str, trust_pickle: bool) -> dict:
    path = os.path.join(ckpt, LEGACY_STATE)
    if not trust_pickle:
        raise UserError(f"checkpoint {ckpt} is in gvu's old format ({LEGACY_STATE}, a pickle that can run code when "
                        f"loaded); load it only if you trust it, with {TRUST_FLAG}")
    if path not in _warned:
        _warned.add(path)
        print(f"[gvu] warning: {TRUST_FLAG}: unpickling {path} (an old-format checkpoint). Unpickling runs any code "
              "the file holds; the checkpoints this run writes from now on are in the new format (no pickle)",
              file=sys.stderr)
    state = torch.load(path, weights_only=False, map_location="cpu")  # the one pickle load, behind TRUST_FLAG
    rng = dict(state["rng"])
    if isinstance(rng.get("torch"), torch.Tensor):  # states written before they were plain data
        rng["torch"] = rng["torch"].tolist()
    return {"step": state["step"], "extra": state.get("extra", {}), "rng": rng, "optimizer": state["optimizer"]}


def load_weights(ckpt: str, model: torch.nn.Module) -> None:
    """Copy a checkpoint's trainable weights into `model` (names and shapes checked)."""
    try:
        weights = load_file(os.path.join(ckpt, WEIGHTS))
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointCorrupt(f"checkpoint {ckpt}: {WEIGHTS} is unreadable ({type(e).__name__}: {e})") from None
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    unknown = [n for n in weights if n not in params]
    if missing or unknown:
        raise ValueError(f"checkpoint {ckpt} does not match this model's trainable weights (missing "
                         f"{missing[:3]}, unknown {unknown[:3]}); was it made with other LoRA or fine-tuning settings?")
    shapes = [n for n, w in weights.items() if w.shape != params[n].shape]
    if shapes:
        raise ValueError(f"checkpoint {ckpt}: weight {shapes[0]} has shape {tuple(weights[shapes[0]].shape)} but this "
                         f"model's is {tuple(params[shapes[0]].shape)}; was it made from another model?")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w.to(params[n].dtype))


def load(ckpt: str, model: torch.nn.Module, optimizer, trust_pickle: bool = False) -> tuple[int, dict, dict[str, torch.Tensor]]:
    """Restore weights, optimiser and RNG in place; returns (step, extra, extra_tensors).
    optimizer None: the optimiser state is left for the caller (read_optimizer_state; FSDP loads it after sharding).
    Nothing is unpickled unless trust_pickle and the checkpoint is of the old format."""
    state = read_state(ckpt, trust_pickle)  # verifies the manifest first
    load_weights(ckpt, model)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_states(state["rng"])
    extra_path = os.path.join(ckpt, EXTRA)
    try:
        tensors = load_file(extra_path) if os.path.exists(extra_path) else {}
    except (OSError, ValueError, SafetensorError) as e:
        raise CheckpointCorrupt(f"checkpoint {ckpt}: {EXTRA} is unreadable ({type(e).__name__}: {e})") from None
    return state["step"], state["extra"], tensors


def read_optimizer_state(ckpt: str, trust_pickle: bool = False) -> dict:
    return read_state(ckpt, trust_pickle)["optimizer"]
