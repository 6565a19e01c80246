"""Issue 3: how much the stage-1 VQ tokenizer varies between draws (seeds) of the same recipe.

Runs stages 0, 1 and 1c of a preset with another --seed into OUT (resumable: each stage keeps its checkpoint), then
scores the VQ as `benchmarks/nano_model_eval.py --only vq` does: the exact evaluator on reconstructions of the 553
eval-split renderings, once with stage 1's decoder and once after stage 1c. The seed changes the VQ's initial
weights and its training scenes (and the tokenizer's corpus, which the VQ does not use).

Usage: python -m experiments.vq_draw --seed 1 --out runs/vqdraw-s1 [--preset nano] [--threads 2]
    [--set KEY=VALUE ...] (PretrainConfig fields: vq_steps=4000, vq_batch=16, dec_steps=0 for no stage 1c,
    device=cuda) [--spec KEY=VALUE ...] (NanoSpec fields of the VQ: vq_base_channels=64, vq_res_blocks=2,
    vq_codebook=1024)
Prints the two scores and writes OUT/vq_draw.json.
       python -m experiments.vq_draw --report DIR   prints one table row for each DIR/<run>/vq_draw.json
       python -m experiments.vq_draw --curve RUN [RUN ...]   prints each run's stage-1 reconstruction MSE by step (the
           mean of the logged values in the 100 steps up to it), from RUN/log.jsonl or RUN/log.jsonl.gz
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace



def score(vq_state: dict, config, tok, spec, out_dir: str) -> dict:
    """The VQ inside an otherwise untrained model directory, scored by gvu.nano_eval.bench_vq."""
    import torch
    from transformers import JanusForConditionalGeneration

    from gvu.models.janus import JanusBackend
    from gvu.models.pretrain import save_model
    from gvu.nano_eval import bench_vq, eval_scenes

    if not os.path.exists(os.path.join(out_dir, "config.json")):
        torch.manual_seed(0)
        model = JanusForConditionalGeneration(config)
        model.model.vqmodel.load_state_dict(vq_state)
        save_model(model, tok, spec, out_dir)
    # the scenes of every draw in results/gpu-vq-h200 and the model card (held-out pairs allowed in open colours), so
    # that new draws compare with them; nano_model_eval's default draws them as the world renders eval images
    return bench_vq(JanusBackend.from_pretrained(out_dir), eval_scenes(None, seed=99, held_out_colours=True))


def resolve(preset: str, seed: int, threads: int | None = None, sets: list[str] = (), specs: list[str] = ()):
    """The PretrainConfig of a draw: the preset with the seed, threads and --set changes; with --spec changes, a spec
    of its own registered in nano.SPECS under a name that says what changed. Raises ValueError on bad input."""
    from gvu.models import nano
    from gvu.models.pretrain import PRESETS, parse_overrides

    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    changes = {"seed": seed, **({"threads": threads} if threads else {}), **parse_overrides(sets)}
    cfg = replace(PRESETS[preset], **changes)
    if specs:
        spec_changes = parse_overrides(specs, nano.NanoSpec, "--spec")
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


def stage1_mse(run: str) -> dict[int, float]:
    """{step: reconstruction MSE} of the stage-1 records in run's log (log.jsonl, or log.jsonl.gz as committed)."""
    import gzip

    for name, opener in (("log.jsonl", open), ("log.jsonl.gz", gzip.open)):
        path = os.path.join(run, name)
        if os.path.exists(path):
            with opener(path, "rt") as f:
                rows = [json.loads(line) for line in f if line.strip()]
            return {r["step"]: r["vq/mse"] for r in rows if r.get("stage") == 1 and "vq/mse" in r}
    raise ValueError(f"{run}: no log.jsonl or log.jsonl.gz (give a run folder of vq_draw.py or gvu pretrain)")


def curve(runs: list[str], steps=(200, 400, 600, 800, 1000, 1200, 1400, 1600, 1800, 2000, 3000, 4000),
          window: int = 100) -> None:
    """A markdown table: one row per step, one column per run; each cell the mean stage-1 MSE of the logged steps in
    (step - window, step], blank where the run has none (it stopped earlier)."""
    logs = {run: stage1_mse(run) for run in runs}
    print("| step | " + " | ".join(os.path.basename(os.path.normpath(r)) for r in runs) + " |")
    print("|---:|" + "---:|" * len(runs))
    for step in steps:
        cells = []
        for run in runs:
            vals = [v for s, v in logs[run].items() if step - window < s <= step]
            cells.append(f"{sum(vals) / len(vals):.4f}" if vals else "")
        if any(cells):
            print(f"| {step} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--report", metavar="DIR", help="print the table of the runs in DIR and stop")
    ap.add_argument("--curve", nargs="+", metavar="RUN", help="print the runs' stage-1 MSE by step and stop")
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
    if args.curve:
        try:
            return curve(args.curve)
        except ValueError as e:
            ap.error(str(e))
    if args.seed is None or not args.out:
        ap.error("--seed and --out are required (or --report DIR, or --curve RUN ...)")
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
