"""Set-up and timing of short pretraining-stage runs, shared by the benchmarks that time them
(`python -m benchmarks.stage2_image_sharing`, `benchmarks.data_workers_speed`, `benchmarks.pretrain_speed`)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import gvu.models.pretrain as pretrain


def scratch_setup(out: str, full: pretrain.PretrainConfig, **changes):
    """Stages 0, 1 and 1b of `full` for 2 steps each in `out` (fresh weights: speed does not depend on them).
    -> (short config with `changes`, spec, tokenizer, JanusConfig, VQ state, vision state). Eager unless `changes`
    say torch_compile=True: the benchmarks that use it were measured eagerly and compare two eager code paths."""
    changes = {"torch_compile": False, **changes}
    short = replace(full, vq_steps=2, vis_steps=2, dec_steps=0, save_every=10**9, **changes)
    spec, tok, config = pretrain.stage0(short, out)
    return short, spec, tok, config, pretrain.stage1(short, out, config), pretrain.stage_vision(short, out, config)


def new_run(out: str, name: str) -> str:
    """A run folder under `out` holding the scratch set-up's config and tokenizer."""
    run = os.path.join(out, name)
    os.makedirs(run)
    shutil.copy(os.path.join(out, "config.json"), run)
    shutil.copytree(os.path.join(out, "tokenizer"), os.path.join(run, "tokenizer"))
    return run


def stage_times(run: str, stage) -> list[float]:
    """The `time` (seconds since the stage started) of each record that `stage` (1, "1b", "1c", 2 or 3) wrote to
    the run folder's log.jsonl, in order: the stages log every 20 steps, so consecutive times are 20 steps apart."""
    with open(os.path.join(run, "log.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r["time"] for r in records if str(r.get("stage")) == str(stage) and "time" in r]
