"""Issue 3: how much the stage-1 VQ tokenizer varies between draws (seeds) of the same recipe.

Runs stages 0, 1 and 1c of a preset with another --seed into OUT (resumable: each stage keeps its checkpoint), then
scores the VQ as `benchmarks/nano_model_eval.py --only vq` does: the exact evaluator on reconstructions of the 553
eval-split renderings, once with stage 1's decoder and once after stage 1c. The seed changes the VQ's initial
weights and its training scenes (and the tokenizer's corpus, which the VQ does not use).

Usage: python experiments/vq_draw.py --seed 1 --out runs/vqdraw-s1 [--preset nano] [--threads 2]
    [--set KEY=VALUE ...] (PretrainConfig fields: vq_steps=4000, vq_batch=16, dec_steps=0 for no stage 1c,
    device=cuda) [--spec KEY=VALUE ...] (NanoSpec fields of the VQ: vq_base_channels=64, vq_res_blocks=2,
    vq_codebook=1024)
Prints the two scores and writes OUT/vq_draw.json.
       python experiments/vq_draw.py --report DIR   prints one table row for each DIR/<run>/vq_draw.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))


def score(vq_state: dict, config, tok, spec, out_dir: str) -> dict:
    """The VQ inside an otherwise untrained model directory, scored by nano_model_eval's bench_vq."""
    import torch
    from nano_model_eval import bench_vq, eval_scenes
    from transformers import JanusForConditionalGeneration

    from gvu.models.janus import JanusBackend
    from gvu.models.pretrain import save_model

    if not os.path.exists(os.path.join(out_dir, "config.json")):
        torch.manual_seed(0)
        model = JanusForConditionalGeneration(config)
        model.model.vqmodel.load_state_dict(vq_state)
        save_model(model, tok, spec, out_dir)
    return bench_vq(JanusBackend.from_pretrained(out_dir), eval_scenes(None, seed=99))


def parse_sets(items: list[str], cls, flag: str) -> dict:
    """KEY=VALUE strings -> {field: value} for the dataclass cls (values parsed as JSON, else kept as text)."""
    out = {}
    for kv in items:
        key, eq, value = kv.partition("=")
        if not eq:
            raise ValueError(f"{flag} {kv}: no value; write {flag} FIELD=VALUE")
        if key not in cls.__dataclass_fields__:
            raise ValueError(f"{flag} {kv}: {key!r} is not a {cls.__name__} field")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def resolve(preset: str, seed: int, threads: int | None = None, sets: list[str] = (), specs: list[str] = ()):
    """The PretrainConfig of a draw: the preset with the seed, threads and --set changes; with --spec changes, a spec
    of its own registered in nano.SPECS under a name that says what changed. Raises ValueError on bad input."""
    from gvu.models import nano
    from gvu.models.pretrain import PRESETS, PretrainConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    changes = {"seed": seed, **({"threads": threads} if threads else {}), **parse_sets(sets, PretrainConfig, "--set")}
    cfg = replace(PRESETS[preset], **changes)
    if specs:
        spec_changes = {k: tuple(v) if isinstance(v, list) else v
                        for k, v in parse_sets(specs, nano.NanoSpec, "--spec").items()}
        name = cfg.spec + "+" + ",".join(f"{k}={v}" for k, v in sorted(spec_changes.items()))
        nano.SPECS[name] = replace(nano.SPECS[cfg.spec], **spec_changes)
        cfg = replace(cfg, spec=name)
    return cfg


def report(folder: str) -> None:
    """One markdown row per run folder under `folder` (unfinished runs say so)."""
    print("| run | VQ after stage 1 | after stage 1c | counting (1c) | stage 1 min | stage 1c min |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name, "vq_draw.json")
        if os.path.exists(path):
            with open(path) as f:
                r = json.load(f)
            print(f"| {name} | {r['vq_after_stage1']:.3f} | {r['vq_after_stage1c']:.3f} | "
                  f"{r['per_tag_after_stage1c']['counting']:.3f} | {r['stage1_minutes']} | {r['stage1c_minutes']} |")
        elif os.path.isdir(os.path.join(folder, name)):
            print(f"| {name} | not finished | | | | |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", metavar="DIR", help="print the table of the runs in DIR and stop")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the preset's)")
    ap.add_argument("--out")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a PretrainConfig field (JSON value: 4000, true; other text as is: cuda)")
    ap.add_argument("--spec", action="append", default=[], metavar="KEY=VALUE",
                    help="a NanoSpec field of the VQ (JSON value: 64, [1, 1, 2, 2])")
    args = ap.parse_args()
    if args.report:
        return report(args.report)
    if args.seed is None or not args.out:
        ap.error("--seed and --out are required (or --report DIR)")
    import torch

    from gvu.models.pretrain import stage0, stage1, stage_decoder

    try:
        cfg = resolve(args.preset, args.seed, args.threads, args.set, args.spec)
    except ValueError as e:
        ap.error(str(e))
    torch.set_num_threads(cfg.threads)
    os.makedirs(args.out, exist_ok=True)
    t0 = time.time()
    spec, tok, config = stage0(cfg, args.out)
    vq = stage1(cfg, args.out, config)
    t1 = time.time()
    before = score(vq, config, tok, spec, os.path.join(args.out, "model-stage1"))
    print(f"VQ after stage 1: {before['overall']:.3f}", flush=True)  # known long before stage 1c ends
    t2 = time.time()
    vq = stage_decoder(cfg, args.out, config, vq)
    t3 = time.time()
    # with dec_steps=0 there is no stage 1c: the same VQ, so the same score
    after = score(vq, config, tok, spec, os.path.join(args.out, "model-stage1c")) if cfg.dec_steps else before
    res = {"preset": args.preset, "seed": args.seed, "threads": cfg.threads, "set": args.set, "spec": args.spec,
           "vq_after_stage1": before["overall"], "vq_after_stage1c": after["overall"],
           "per_tag_after_stage1c": after["per_tag"], "stage1_minutes": round((t1 - t0) / 60, 1),
           "stage1c_minutes": round((t3 - t2) / 60, 1)}
    with open(os.path.join(args.out, "vq_draw.json"), "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
