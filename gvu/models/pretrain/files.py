"""What a pretraining stage writes into its run folder: stage checkpoints, log.jsonl and config.json.

A stage checkpoint (stage1.pt, decoder.pt, vision.pt, stage2.pt, stage3.pt) holds only tensors and plain data
(dicts, lists, tuples, numbers, strings): the weights, the optimiser's state, the step, and every RNG state as the
lists of gvu.checkpoint.rng_states / python_rng_state. It is read with torch.load(weights_only=True), which refuses
anything else, so a file planted in a run folder cannot run code when the run resumes.
"""

from __future__ import annotations

import json
import os
import pickle
import random

import torch

from gvu.atomic import fsync
from gvu.checkpoint import python_rng_state, python_rng_tuple, rng_states, set_rng_states
from gvu.errors import UserError


def save_config(config, out: str) -> None:
    """config.json written whole or not at all (a crash mid-write must not leave a file that later runs trip on)."""
    tmp = os.path.join(out, ".config.tmp")
    config.save_pretrained(tmp)
    os.replace(os.path.join(tmp, "config.json"), os.path.join(out, "config.json"))
    os.rmdir(tmp)


def atomic_save(obj: dict, path: str) -> None:
    """torch.save, through a temporary file flushed to disk before the rename: a crash or a power loss leaves the
    old checkpoint or the new one, never a part."""
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    fsync(tmp)
    os.replace(tmp, path)


def load_stage(path: str, device: str) -> dict | None:
    """A stage checkpoint, or None when there is none. Read with weights_only=True: a file holding anything but
    tensors and plain data (a pickled object, which could run code) is refused with a UserError, as is a file that
    is not a checkpoint at all; neither runs anything."""
    if not os.path.exists(path):
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        why = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{path} holds more than tensors and plain data, so it was not written by `gvu pretrain` "
                        f"(loading it would run code; refused: {why}). Delete it to run this stage again from its "
                        "start, or pick another --out") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable stage checkpoint ({type(e).__name__}); delete it to run this "
                        "stage again from its start") from None


def stage_rngs(data_rng: random.Random | None = None) -> dict:
    """The RNG part of a stage checkpoint: the global RNGs (Python, NumPy, torch) and the stage's data stream, as
    plain lists."""
    out = {"rng": rng_states()}
    if data_rng is not None:
        out["data_rng"] = python_rng_state(data_rng)
    return out


def set_global_rngs(state: dict) -> None:
    """Restore stage_rngs' "rng". Checkpoints written before the RNGs were plain lists hold Python's state as a tuple
    and torch's as a tensor (and no NumPy state); both read the same way."""
    if "numpy" in state:
        set_rng_states(state)
        return
    random.setstate(python_rng_tuple(state["python"]))
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())


def restore(state: dict, model, opt, data_rng: random.Random | None = None) -> int:
    """Resume a stage from its checkpoint: weights, optimiser, RNGs (data_rng: the stage's data stream, when it has
    one; stages 2 and 3 seed their data per step instead); returns the step."""
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    set_global_rngs(state["rng"])
    if data_rng is not None:
        data_rng.setstate(python_rng_tuple(state["data_rng"]))
    return state["step"]


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
