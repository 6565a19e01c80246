"""Issue 5's evidence: GvU against the base model and against other rewards, on the shipped nano-Janus.

Every row trains with the same preset (configs/nano.json: same steps, batch, group size, learning rate; the
same compute budget), then is evaluated on the eval and ood splits (4 images per prompt, fixed seeds) and on
understanding (choose the true caption among 4 minimal edits). Each row runs with several training seeds;
the table shows mean and spread (half the max-min range).

Usage: python -m experiments.compare_rewards [--seeds 0 1] [--rows base,gvu_policy,...] [--steps N] [--threads 2] [--out runs/compare]
       [--set lr=4e-5 ...] [--eval-at 150 ...]
--set overrides the preset for every training row (the same budget for all rows; use a new --out per setting).
--extend OUT0 starts each training row from its run in OUT0 (a shorter comparison with the same --set) and trains it
on to --steps; under the constant schedule that equals training --steps from the start.
--eval-at also evaluates each training row's checkpoints at those steps (multiples of checkpoint_every), shown
as rows "name@step": one run of N steps gives the table at several budgets.
--eval-cfg S evaluates every row (already trained, or trained now) with guidance S instead of the training config's,
cached apart (result-cfgS.json): e.g. rows trained without guidance (the nano preset's) judged at 3.
Long: about (steps x step time + 2 evaluations) per run; run it in the background and read OUT/table.md.
"""

from __future__ import annotations

import argparse
import os
import sys

from gvu.compare import ROWS, cfg_suffix, extend_problem, plot_budget, row_config, run_row, table_lines
from gvu.errors import UserError


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
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the preset for every training row (e.g. --set lr=4e-5); use a new --out per setting")
    ap.add_argument("--eval-at", type=int, nargs="*", default=[],
                    help="also evaluate each training row at these earlier steps (multiples of checkpoint_every)")
    ap.add_argument("--extend", metavar="OUT", default=None,
                    help="start each training row from the same row of a shorter comparison's --out (same --set), "
                         "resuming it to --steps; its own result becomes the row at its step count")
    ap.add_argument("--eval-cfg", type=float, default=None, metavar="S",
                    help="evaluate every row with guidance S (> 1) instead of the training config's (cached apart)")
    args = ap.parse_args()
    from gvu.config import SamplingConfig
    try:
        SamplingConfig(cfg_scale=args.eval_cfg).validate()  # the backend's rule for guidance, before any work
    except ValueError as e:
        ap.error(f"--eval-cfg: {e}")
    rows = args.rows.split(",")
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}; choose from {list(ROWS)}")
    try:  # --set is parsed and the resolved config checked before any work
        first = row_config(rows[0], 0, args)
        first.validate()
    except (UserError, ValueError) as e:
        ap.error(str(e))
    from gvu.models.janus import check_checkpoint
    try:  # the model's files (no weights read), and every row --extend starts from, before the first row's work
        check_checkpoint(args.model)
    except ValueError as e:
        ap.error(f"--model: {e}")
    if args.extend:
        for name in rows:
            for seed in args.seeds if ROWS[name] is not None else []:
                if not os.path.exists(os.path.join(args.out, f"{name}-s{seed}")):
                    problem, _ = extend_problem(os.path.join(args.extend, f"{name}-s{seed}"), args)
                    if problem:
                        ap.error(problem)
    every = first.checkpoint_every
    args.eval_at = sorted(set(args.eval_at))
    for s in args.eval_at:
        if not 0 < s < args.steps or s % every:
            ap.error(f"--eval-at {s}: steps must lie in (0, {args.steps}) and be multiples of checkpoint_every ({every})")
    import torch
    torch.set_num_threads(args.threads)
    results = {}
    try:
        for name in rows:
            for seed in (args.seeds if ROWS[name] is not None else [0]):
                results.setdefault(name, []).append(run_row(name, seed, args))
                if ROWS[name] is not None:
                    for s in args.eval_at:
                        results.setdefault(f"{name}@{s}", []).append(run_row(name, seed, args, s))
    except UserError as e:  # a cache made with other --set overrides: said plainly, no traceback
        sys.exit(f"compare_rewards: error: {e}")
    table = "\n".join(table_lines(results))
    print(table)
    with open(os.path.join(args.out, f"table{cfg_suffix(args)}.md"), "w") as f:
        f.write(table + f"\n\nsteps {args.steps}, preset configs/nano.json, model {args.model}, --set {args.set}"
                + (f", evaluated with guidance {args.eval_cfg:g}" if args.eval_cfg else "") + "\n")
    if args.eval_at:
        print(f"plot: {plot_budget(results, rows, args)}")


if __name__ == "__main__":
    main()
