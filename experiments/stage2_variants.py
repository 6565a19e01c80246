"""Stage-2 recipe variants of nano-Janus, trained from one finished stage 1 (VQ) and stage 1b (vision encoder).

How v3's stage 2 was chosen: each variant is `PRESETS[--preset]` plus JSON overrides, trained from the same
stage1.pt (or --vq-from's VQ) and vision.pt (copied from --base, a `gvu pretrain` output folder), saved as a model directory, and
scored with benchmarks.nano_model_eval (understanding, QA, generation, groups). Variants run side by side, one
process each (a GPU box with many cores runs three at once; on a 2-core CPU run them one at a time).

Usage:
  python -m experiments.stage2_variants --base runs/pretrain-nano --out runs/variants --device cuda \\
      --variant a '{"gen_batch": 64, "und_batch": 16, "rank_images": 6, "spatial_share": 0.3}' \\
      --variant d '{"gen_batch": 64, "und_batch": 16, "rank_images": 6, "spatial_share": 0.3, "gen_weight": 3.0}'
Writes OUT/<name>/model, OUT/<name>/eval/results.json and OUT/table.md.

--vq-from MODEL_DIR takes the VQ tokenizer from a saved model (for example the shipped one, whose decoder stage 1c
sharpened) instead of --base's stage1.pt; --base then needs only config.json, tokenizer and vision.pt. The default
preset nano-v3 has no stage 1c; with --preset nano, add "dec_steps": 0, or stage 1c runs again on that decoder:
  python -m experiments.stage2_variants --base runs/cpu-repro-v3 --vq-from models/nano-janus --out runs/long \\
      --device cuda --variant L '{"lm_steps": 3600}'
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys


def from_base(vq_from: str | None) -> tuple[str, ...]:
    """What each variant copies from --base: stage 1 too, unless its VQ comes from --vq-from."""
    return ("config.json", "tokenizer", "vision.pt") + (() if vq_from else ("stage1.pt",))


def check_inputs(base: str, vq_from: str | None) -> None:
    """Before any work: --base holds what the variants copy, and --vq-from is a saved model whose VQ fits --base."""
    missing = [f for f in from_base(vq_from) if not os.path.exists(os.path.join(base, f))]
    if missing:
        raise SystemExit(f"{base} has no {', '.join(missing)}: give --base a `gvu pretrain` folder whose stage 1b "
                         f"{'is' if vq_from else 'and stage 1 are'} done")
    if not vq_from:
        return
    missing = [f for f in ("model.safetensors", "config.json") if not os.path.exists(os.path.join(vq_from, f))]
    if missing:
        raise SystemExit(f"--vq-from {vq_from!r} has no {', '.join(missing)}: give a saved model directory, "
                         "e.g. models/nano-janus")
    with open(os.path.join(base, "config.json")) as f, open(os.path.join(vq_from, "config.json")) as g:
        want, got = json.load(f).get("vq_config"), json.load(g).get("vq_config")
    keys = ("embed_dim", "num_embeddings", "base_channels", "channel_multiplier", "num_res_blocks", "latent_channels",
            "num_patches")
    diff = {k: (got.get(k), want.get(k)) for k in keys if got and want and got.get(k) != want.get(k)}
    if not got or diff:
        raise SystemExit(f"--vq-from {vq_from!r}: its VQ does not fit {base}'s config "
                         f"({diff or 'no vq_config'}; theirs, --base's); give a model of the same spec")


def train_variant(base: str, out: str, preset: str, overrides: dict, device: str, vq_from: str | None = None) -> None:
    """One stage-2 run in its own folder, then its model directory: gvu.models.pretrain.pretrain, which finds stages
    1 and 1b done (copied from base, or stage 1 made from vq_from) and resumes stage 2 from its own checkpoint if
    it was stopped."""
    import torch

    from gvu.models.pretrain import PRESETS, RunFolder, atomic_save, pretrain, vq_checkpoint

    check_inputs(base, vq_from)
    RunFolder.check_folder(out)  # before anything is copied in: never into a saved model or a folder of other files
    os.makedirs(out, exist_ok=True)
    for f in from_base(vq_from):
        src, dst = os.path.join(base, f), os.path.join(out, f)
        if not os.path.exists(dst):
            (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, dst)
    stage1 = os.path.join(out, "stage1.pt")
    if os.path.exists(stage1):  # a rerun: its VQ must come from where this run's did
        had = torch.load(stage1, weights_only=True, map_location="cpu").get("vq_from")
        now = os.path.abspath(vq_from) if vq_from else None
        if had != now:
            raise SystemExit(f"{out} was trained with its VQ from {had or '--base'}, not {now or '--base'}; "
                             "pick another --out or delete it")
    elif vq_from:
        vq_steps = overrides.get("vq_steps", PRESETS[preset].vq_steps)
        atomic_save(vq_checkpoint(vq_from, vq_steps), stage1)
    pretrain(preset, out, device=device, **overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="a `gvu pretrain` folder with vision.pt (and stage1.pt, unless --vq-from)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--preset", default="nano-v3", help="the recipe the variants change (nano-v3: stage 2 as v3 trained it, no stages 1c or 3)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--vq-from", default=None, metavar="MODEL_DIR",
                    help="take the VQ from this saved model instead of --base's stage1.pt (e.g. models/nano-janus)")
    ap.add_argument("--variant", nargs=2, action="append", metavar=("NAME", "JSON"), required=True)
    ap.add_argument("--eval-threads", type=int, default=2)
    ap.add_argument("--eval-prompts", type=int, default=None, help="eval prompts per benchmark (default: all 553)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: train one variant in this process
    args = ap.parse_args()
    variants = {}
    for name, text in args.variant:
        try:
            variants[name] = json.loads(text)
        except json.JSONDecodeError as e:
            raise SystemExit(f"variant {name!r}: overrides must be a JSON object ({e})")
    check_inputs(args.base, args.vq_from)
    if args.one:
        train_variant(args.base, os.path.join(args.out, args.one), args.preset, variants[args.one], args.device,
                      args.vq_from)
        return
    # the variants and their evaluations run as `python -m` from the same working directory (the repo root)
    me = [sys.executable, "-m", "experiments.stage2_variants", "--base", args.base, "--out", args.out, "--preset", args.preset,
          "--device", args.device] + (["--vq-from", args.vq_from] if args.vq_from else []) \
        + [x for n, t in args.variant for x in ("--variant", n, t)]
    procs = {n: subprocess.Popen(me + ["--one", n]) for n in variants}
    failed = [n for n, p in procs.items() if p.wait() != 0]
    if failed:
        raise SystemExit(f"variants failed: {failed}")
    evals = {n: subprocess.Popen([sys.executable, "-m", "benchmarks.nano_model_eval",
                                  "--model", os.path.join(args.out, n, "model"), "--device", args.device,
                                  "--threads", str(args.eval_threads), "--only", "understanding,qa,generation,groups",
                                  "--out", os.path.join(args.out, n, "eval")]
                                 + (["--prompts", str(args.eval_prompts), "--group-prompts", "4"] if args.eval_prompts else []),
                                 stdout=subprocess.DEVNULL)
             for n in variants}
    for n, p in evals.items():
        if p.wait() != 0:
            raise SystemExit(f"evaluation of {n} failed")
    lines = ["| variant | overrides | understanding (1 of 4) | relation edits caught | generation | mixed groups |",
             "|---|---|---|---|---|---|"]
    for n, o in variants.items():
        with open(os.path.join(args.out, n, "eval", "results.json")) as f:
            r = json.load(f)
        u = r["understanding"]
        lines.append(f"| {n} | `{json.dumps(o)}` | {u['choose_1_of_4_sum_logp']['overall']:.3f} | "
                     f"{u['true_beats_edit_by_kind'].get('relation', float('nan')):.2f} | {r['generation']['overall']:.3f} | "
                     f"{r['groups']['mixed_fraction']:.2f} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + "\n")


if __name__ == "__main__":
    main()
