"""Run folders: the checks on --out that `gvu train` and `gvu pretrain` make before any work, and the lock a run
holds on its folder. Every refusal comes before anything in the folder changes.

- A folder is new, empty, or a run of the same command: never a file, a saved model, or a folder of other files.
- A run's own inputs (its model, its prompts) never lie inside its --out.
- Resuming compares the saved config with this command's, except the fields that change only speed or place.

`gvu train` (check_run_dir / make_run_dir): --resume continues a run, --overwrite replaces one, and neither is
implied. `gvu pretrain` (gvu.models.pretrain.run.RunFolder) resumes a run of the same recipe by running again.
Light: no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from gvu import run_lock
from gvu.config import ConfigError, TrainConfig

# ----------------------------------------------------------------------------------------------- shared guards


def listing(names: list[str], most: int = 5) -> str:
    """'a, b, c' (and ', ...' past `most` names), for messages about what a folder holds."""
    return ", ".join(names[:most]) + (", ..." if len(names) > most else "")


def refuse_file(out: str, what: str) -> None:
    """--out must be a folder (or not exist yet)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; give a folder for the {what}")


def foreign_files(out: str, run_file) -> list[str]:
    """The names in folder `out` that a run does not write (run_file(name) -> bool), sorted; [] for no folder."""
    return sorted(n for n in (os.listdir(out) if os.path.isdir(out) else []) if not run_file(n))


def is_inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies in it (symbolic links followed)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def changed_fields(saved: dict, want: dict, free=()) -> dict:
    """{field: (saved value, wanted value)} for the fields where two configs (as JSON data) differ, leaving out the
    `free` ones (speed-only and runtime fields, under which a run resumes); a saved field the wanted config does not
    know counts as changed."""
    diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v and k not in free}
    diff.update({k: (v, None) for k, v in saved.items() if k not in want and k not in free})
    return diff


def as_json(obj) -> dict:
    """A config dataclass as JSON reads it back (tuples become lists), for comparing with a saved one."""
    return json.loads(json.dumps(asdict(obj)))


# ----------------------------------------------------------------------------------------------- gvu train

# fields that change how fast a `gvu train` run goes (or its memory, how often it logs, how long ranks wait for each
# other), never what it computes (gradient checkpointing recomputes the same operations): a run resumes under others
SPEED_ONLY = ("dist_timeout_min", "evaluator_workers", "gradient_checkpointing", "log_every")

# what a `gvu train` run folder holds (the experiments add result*.json; a crash can leave *.tmp); --overwrite
# replaces only such a folder
RUN_FILES = {"config.json", "metrics.jsonl", "diagnostics.jsonl", "before.json", "after.json", "summary.md",
             "curves.png", "checkpoints", "grids", "tensorboard", run_lock.LOCK_NAME}


def run_file(name: str) -> bool:
    return name in RUN_FILES or name.endswith(".tmp") or (name.startswith("result") and name.endswith(".json"))


def with_defaults(saved: dict) -> dict:
    """A run's saved config with the fields added to TrainConfig since the run began set to their defaults (which
    is what the run used), so that older runs still resume."""
    full = as_json(TrainConfig())
    out = {**full, **saved}
    for k, v in full.items():
        if isinstance(v, dict) and isinstance(saved.get(k), dict):
            out[k] = {**v, **saved[k]}
    return out


def extendable(saved: dict, want: dict) -> bool:
    """Whether a finished or stopped run may go on to more steps: it may under the constant schedule, where a step's
    learning rate does not depend on the total, and rollouts are seeded by (seed, step), so the extended run's
    weights equal those of a run started with the larger step count."""
    return want["steps"] > saved["steps"] and want["schedule"] == "constant"


def is_run_dir(run_dir: str) -> bool:
    """A folder `gvu train` made: its config.json is a TrainConfig's (and nothing foreign sits beside it)."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(saved, dict) and {"group_size", "sampling", "reward"} <= saved.keys()
            and not foreign_files(run_dir, run_file))


def check_run_dir(run_dir: str, cfg: TrainConfig, resume: bool, overwrite: bool) -> str:
    """Check --out against the flags, changing nothing; returns what make_run_dir will do: "new" (make it),
    "replace" (an old run, under --overwrite), "extend" (a longer run of the same recipe) or "resume"."""
    refuse_file(run_dir, "run")
    inside = [p for p in (cfg.model, cfg.prompts_file) if p and os.path.exists(run_dir) and is_inside(p, run_dir)]
    if inside and not resume:
        raise ConfigError(f"--out {run_dir} holds this run's own input {inside[0]}: pick another --out")
    cfg_path = os.path.join(run_dir, "config.json")
    if resume:
        if not os.path.exists(cfg_path):
            raise ConfigError(f"--resume: {run_dir} holds no run (no config.json)")
        with open(cfg_path) as f:
            saved = with_defaults(json.load(f))
        want = as_json(cfg)
        diff = changed_fields(saved, want, SPEED_ONLY)
        hint = ""
        if set(diff) == {"steps"}:
            if extendable(saved, want):
                return "extend"  # a longer run of the same recipe: the steps so far are its first steps
            hint = (" (more steps extend a run only under the constant schedule: cosine's decay depends on the total)"
                    if want["steps"] > saved["steps"] else
                    " (a run is not shortened: its earlier weights are in checkpoints/step_*)")
        if diff:
            raise ConfigError(f"--resume: the config differs from the run's own ({diff}); resume with the same "
                              f"settings{hint}")
        return "resume"
    if os.path.isdir(run_dir) and run_lock.entries(run_dir):
        check_replaceable(run_dir)
        if not overwrite:
            raise ConfigError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to "
                              "replace it")
        return "replace"
    return "new"


def check_replaceable(run_dir: str) -> None:
    if not is_run_dir(run_dir):
        raise ConfigError(f"--out {run_dir} is not empty and is not a gvu train run (it holds "
                          f"{listing(sorted(os.listdir(run_dir)))}); pick a new or empty folder")


def make_run_dir(run_dir: str, cfg: TrainConfig, plan: str, lock: run_lock.RunLock | None = None) -> None:
    """Carry out check_run_dir's plan (rank 0, once training is set up), checking again what may have changed since
    (another `gvu train` given the same --out in the meantime). lock: the run's held lock; --overwrite then empties
    the folder but keeps the lock file, so the lock is never let go in between."""
    from gvu.run_io import write_config

    if plan == "resume":
        return
    if plan in ("new", "replace"):
        if os.path.isdir(run_dir) and run_lock.entries(run_dir):
            if plan == "new":
                raise ConfigError(f"{run_dir} was empty when this run began and holds files now (another run "
                                  "writing there?); pick another --out")
            check_replaceable(run_dir)
            if lock is not None:  # a run, replaced under --overwrite
                run_lock.clear_run_dir(run_dir, lock)
            else:
                shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
    write_config(run_dir, cfg)


def prepare_run_dir(run_dir: str, cfg: TrainConfig, resume: bool, overwrite: bool) -> None:
    """check_run_dir and make_run_dir at once (for callers that load nothing in between)."""
    make_run_dir(run_dir, cfg, check_run_dir(run_dir, cfg, resume, overwrite))
