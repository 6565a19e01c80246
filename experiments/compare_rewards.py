"""Issue 5's evidence: GvU against the base model and against other rewards, on the shipped nano-Janus.

Every row trains with the same preset (configs/nano.json: same steps, batch, group size, learning rate; the
same compute budget), then is evaluated on the eval and ood splits (4 images per prompt, fixed seeds) and on
understanding (choose the true caption among 4 minimal edits). Each row runs with several training seeds;
the table shows mean and spread (half the max-min range).

Usage: python experiments/compare_rewards.py [--seeds 0 1] [--rows base,gvu_policy,...] [--steps N] [--threads 2] [--out runs/compare]
Long: about (steps x step time + 2 evaluations) per run; run it in the background and read OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

ROWS = {
    "base": None,
    "gvu_policy": ["reward.reduction=geometric_mean", "reward.judge=policy"],
    "gvu_frozen": ["reward.reduction=geometric_mean", "reward.judge=frozen"],
    "gvu_product": ["reward.reduction=product", "reward.judge=policy"],
    "gvu_surprisal": ["reward.reduction=geometric_mean", "reward.judge=policy", "reward.token_weights=surprisal"],
    "oracle": ["reward.kind=oracle"],
}


def understanding(backend, n_prompts: int) -> float:
    from nano_model_eval import bench_understanding, eval_scenes
    return bench_understanding(backend, eval_scenes(n_prompts, seed=99), seed=5)["choose_1_of_4_sum_logp"]["overall"]


def run_row(name: str, seed: int, args) -> dict:
    from gvu.models.janus import JanusBackend
    from gvu.model_cli import resolve_train_config
    from gvu.train import final_tables, load_trained, train

    out = os.path.join(args.out, f"{name}-s{seed}")
    done = os.path.join(out, "result.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    sets = (ROWS[name] or []) + [f"seed={seed}", f"steps={args.steps}", "final_eval=false", "eval_every=0",
                                 "grid_every=0", f"model={args.model}", f"threads={args.threads}"]
    if args.eval_prompts:
        sets.append(f"final_eval_prompts={args.eval_prompts}")
    cfg = resolve_train_config("nano", None, sets)
    if ROWS[name] is None:
        backend = JanusBackend.from_pretrained(cfg.model)
        os.makedirs(out, exist_ok=True)
    else:
        train(cfg, out, resume=os.path.exists(os.path.join(out, "config.json")), progress=True)
        backend = load_trained(out)
    tables = final_tables(backend, cfg)
    res = {"eval": tables["eval"]["overall"], "ood": tables["ood"]["overall"],
           "eval_reward": tables["eval"]["reward"], "per_tag": tables["eval"]["per_tag"],
           "understanding": understanding(backend, args.understanding_prompts)}
    with open(done, "w") as f:
        json.dump(res, f, indent=1)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--understanding-prompts", type=int, default=200)
    ap.add_argument("--eval-prompts", type=int, default=None, help="prompts per split in the final evaluation (default: all)")
    ap.add_argument("--out", default="runs/compare")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (1 lets two row lists run side by side on 2 cores)")
    args = ap.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    results = {}
    for name in args.rows.split(","):
        for seed in (args.seeds if ROWS[name] is not None else [0]):
            results.setdefault(name, []).append(run_row(name, seed, args))
    lines = ["| run | nano-GenEval eval | ood | understanding (caption choice) | GvU reward (eval) | seeds |",
             "|---|---|---|---|---|---|"]
    for name, rs in results.items():
        def cell(k):
            v = np.array([r[k] for r in rs])
            return f"{v.mean():.3f} ± {(v.max() - v.min()) / 2:.3f}" if len(v) > 1 else f"{v[0]:.3f}"
        lines.append(f"| {name} | {cell('eval')} | {cell('ood')} | {cell('understanding')} | {cell('eval_reward')} | {len(rs)} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + f"\n\nsteps {args.steps}, preset configs/nano.json, model {args.model}\n")


if __name__ == "__main__":
    main()
