"""Atomic checkpoints: trainable weights (safetensors), optimiser, RNG states and step, in one folder per step.

A checkpoint folder is written under a temporary name, flushed to disk (fsync) and renamed into place, so neither a
crash mid-save nor a power loss just after it leaves a half-written checkpoint; `latest` is a small file naming the
newest complete one, replaced the same way.
"""

from __future__ import annotations

import errno
import os
import random
import shutil

import numpy as np
import torch
from safetensors.torch import load_file, save_file


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


def fsync(path: str) -> None:
    """Flush a file, or a folder's entries, to disk (a rename is durable only once the folder holding it is).
    Where a filesystem cannot sync folders (some network and FUSE ones, Windows), a folder is left as it is."""
    folder = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if folder:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not (folder and e.errno in (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def fsync_folder(folder: str) -> None:
    """fsync every file directly in `folder`, then the folder itself: all of it is on disk before a rename."""
    for name in os.listdir(folder):
        fsync(os.path.join(folder, name))
    fsync(folder)


def save(run_dir: str, step: int, model: torch.nn.Module, optimizer, extra: dict | None = None,
         extra_tensors: dict[str, torch.Tensor] | None = None, optimizer_state: dict | None = None) -> str:
    """optimizer_state: the optimiser state to write instead of optimizer.state_dict() (FSDP: the full,
    name-keyed state gathered from every rank by gvu.dist.full_optimizer_state)."""
    final = os.path.join(run_dir, "checkpoints", f"step_{step:06d}")
    tmp = final + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    save_file(trainable_state(model), os.path.join(tmp, "trainable.safetensors"))
    if extra_tensors:
        save_file({k: v.detach().cpu().contiguous() for k, v in extra_tensors.items()}, os.path.join(tmp, "extra.safetensors"))
    torch.save({"optimizer": optimizer_state if optimizer_state is not None else optimizer.state_dict(), "step": step, "rng": rng_states(), "extra": extra or {}},
               os.path.join(tmp, "state.pt"))
    fsync_folder(tmp)
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


def latest(run_dir: str) -> str | None:
    path = os.path.join(run_dir, "checkpoints", "latest")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return os.path.join(run_dir, "checkpoints", f.read().strip())


def load(ckpt: str, model: torch.nn.Module, optimizer) -> tuple[int, dict, dict[str, torch.Tensor]]:
    """Restore weights, optimiser and RNG in place; returns (step, extra, extra_tensors).
    optimizer None: the optimiser state is left for the caller (read_optimizer_state; FSDP loads it after sharding)."""
    weights = load_file(os.path.join(ckpt, "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing:
        raise ValueError(f"checkpoint {ckpt} does not match this model's trainable weights (missing {missing[:3]}); "
                         "was it made with other LoRA or fine-tuning settings?")
    with torch.no_grad():
        for n, w in weights.items():
            params[n].copy_(w.to(params[n].dtype))
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_states(state["rng"])
    extra_path = os.path.join(ckpt, "extra.safetensors")
    return state["step"], state["extra"], (load_file(extra_path) if os.path.exists(extra_path) else {})


def read_optimizer_state(ckpt: str) -> dict:
    return torch.load(os.path.join(ckpt, "state.pt"), weights_only=False)["optimizer"]
