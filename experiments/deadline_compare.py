"""Issue 5's comparison at a budget set in seconds: every row and seed trains at once, as parallel `gvu train`
processes on one device, for --train-seconds; then every run is evaluated at the same step, the last checkpoint
that all of them reached (and at --fractions of it), so every row gets the same compute in steps and images.

This is how a GPU session with a fixed time limit spends it: the small nano model leaves one GPU mostly idle, so
several runs share it. Each run is plain `gvu train` with a step count it never reaches, under the constant
schedule, so its checkpoint at step k holds the weights of a k-step run (gvu.train.extendable; tested in
tests/test_train.py). Results are cached as compare_rewards.py caches them (OUT/<row>-s<seed>/result-step<k>.json),
with the same evaluation: eval and ood splits, 4 images a prompt, fixed seeds, and the 4-way caption choice.

Usage: python -m experiments.deadline_compare --rows base,gvu_policy,oracle --seeds 0 1 --train-seconds 300
       --set device=cuda --set batch_prompts=32 --out runs/deadline
       python -m experiments.deadline_compare --report --out runs/deadline ...   (only the tables, from the cache)
Logs of every process: OUT/logs/. The tables: OUT/table.md, the plot OUT/budget.png.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

from gvu.compare import ROWS, plot_budget, row_config, row_sets, run_row, table_lines


def run_dir(args, name: str, seed: int) -> str:
    return os.path.join(args.out, f"{name}-s{seed}")


def reached(path: str) -> int:
    """The step of a run folder's committed checkpoint, the one `--resume` continues from (0 if none). A run
    stopped between writing a checkpoint folder and pointing `latest` at it redoes that step when resumed, so the
    folder does not count yet."""
    from gvu import checkpoint

    ckpt = checkpoint.latest(path)
    return int(os.path.basename(ckpt)[5:]) if ckpt else 0


def compare_args(args) -> SimpleNamespace:
    """The fields gvu.compare.run_row reads, so that compare_rewards' training config and caching are shared."""
    return SimpleNamespace(out=args.out, set=list(args.set), extend=None, eval_cfg=None, steps=args.max_steps,
                           model=args.model,
                           threads=args.threads, eval_prompts=args.eval_prompts,
                           understanding_prompts=args.understanding_prompts)


def spawn(cmd: list[str], log: str) -> subprocess.Popen:
    """A process in a session of its own, so that stop() reaches its children too (evaluator workers)."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    with open(log, "a") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                             start_new_session=True)
    p.log = log
    return p


def stop(procs, sig=signal.SIGTERM) -> None:
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass


def tail(log: str, n: int = 25) -> str:
    with open(log) as f:
        return "".join(f.readlines()[-n:])


def common_flags(args) -> list[str]:
    flags = ["--out", args.out, "--model", args.model, "--threads", str(args.threads), "--max-steps",
             str(args.max_steps), "--understanding-prompts", str(args.understanding_prompts)]
    if args.eval_prompts:
        flags += ["--eval-prompts", str(args.eval_prompts)]
    return flags + [x for s in args.set for x in ("--set", s)]


def train_all(args, runs: list[tuple[str, int]]) -> None:
    """Start every run (resuming one that exists), let them train for --train-seconds, then stop them. Each is
    `gvu train` with compare_rewards' config for its row, which main() has validated."""
    procs = {}
    for name, seed in runs:
        out = run_dir(args, name, seed)
        sets = [x for kv in row_sets(name, seed, compare_args(args)) for x in ("--set", kv)]
        cmd = [sys.executable, "-m", "gvu", "train", "--preset", "nano", "--out", out, *sets]
        if os.path.exists(os.path.join(out, "config.json")):
            cmd.append("--resume")
        procs[(name, seed)] = spawn(cmd, os.path.join(args.out, "logs", f"train-{name}-s{seed}.log"))
    t0 = time.time()
    while time.time() - t0 < args.train_seconds:
        failed = [(k, p) for k, p in procs.items() if p.poll() not in (None, 0)]
        if failed:  # a broken run would leave nothing to compare: stop all at once and show why
            stop(procs.values(), signal.SIGKILL)
            (name, seed), p = failed[0]
            sys.exit(f"{name} seed {seed} failed (exit {p.returncode}); the end of {p.log}:\n{tail(p.log)}")
        if all(p.poll() is not None for p in procs.values()):
            break
        time.sleep(2)
    stop(procs.values())  # checkpoints are written atomically: a stop mid-save leaves the last one
    for (name, seed), p in procs.items():
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop([p], signal.SIGKILL)
            p.wait()
        print(f"{name} seed {seed}: stopped after {time.time() - t0:.0f} s at checkpoint step "
              f"{reached(run_dir(args, name, seed))} (exit {p.returncode})", flush=True)


def eval_steps(args, runs) -> list[int]:
    """The common last checkpoint step, then the --fractions of it (rounded down to checkpoints), largest first."""
    trained = [r for r in runs if ROWS[r[0]] is not None]
    if not trained:
        return []
    if args.report:  # the steps every run has a result at (a copied folder may hold no checkpoints)
        have = [{int(f[11:-5]) for f in os.listdir(run_dir(args, *r)) if f.startswith("result-step")}
                if os.path.isdir(run_dir(args, *r)) else set() for r in trained]
        return sorted(set.intersection(*have), reverse=True)
    common = min(reached(run_dir(args, *r)) for r in trained)
    if common == 0:
        none = [f"{n} seed {s}" for n, s in trained if not reached(run_dir(args, n, s))]
        sys.exit(f"{', '.join(none)} reached no checkpoint (logs: {args.out}/logs/train-*.log); raise --train-seconds "
                 "or lower checkpoint_every (--set checkpoint_every=N)")
    every = row_config(trained[0][0], 0, compare_args(args)).checkpoint_every
    steps = {common} | {int(common * f) // every * every for f in args.fractions}
    return sorted((s for s in steps if s > 0), reverse=True)


def eval_job(args, name: str, seed: int, step: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "experiments.deadline_compare", "--_eval", name, str(seed), str(step), *common_flags(args)]
    return spawn(cmd, os.path.join(args.out, "logs", f"eval-{name}-s{seed}-step{step}.log"))


def evaluate_all(args, runs, steps: list[int], running: list[subprocess.Popen]) -> None:
    """Evaluate every trained run at every step, --parallel processes at a time (`running`: jobs already started,
    such as base's); cached results are kept."""
    todo = [(n, s, k) for k in steps for n, s in runs if ROWS[n] is not None]
    todo = [j for j in todo if not os.path.exists(result_path(args, *j))]
    while todo or running:
        for p in running:
            if p.poll() not in (None, 0):  # reported, and left out of the table, not fatal for the others
                print(f"an evaluation failed (exit {p.returncode}); the end of {p.log}:\n{tail(p.log, 10)}", flush=True)
        running = [p for p in running if p.poll() is None]
        while todo and len(running) < args.parallel:
            running.append(eval_job(args, *todo.pop(0)))
        time.sleep(2)


def result_path(args, name: str, seed: int, step: int) -> str:
    return os.path.join(run_dir(args, name, seed), f"result-step{step}.json" if step else "result.json")


def report(args, runs, steps: list[int]) -> str:
    """The tables from the cached results (runs or steps without a result are left out, and said so)."""
    results, missing = {}, []
    for n, s in runs:
        for k in ([0] if ROWS[n] is None else steps):
            p = result_path(args, n, s, k)
            if not os.path.exists(p):
                missing.append(f"{n} seed {s} step {k}")
                continue
            with open(p) as f:
                key = n if ROWS[n] is None or k == steps[0] else f"{n}@{k}"
                results.setdefault(key, []).append(json.load(f))
    lines = [f"Every training row evaluated at step {steps[0] if steps else '-'} (the last checkpoint all runs reached)"
             + ("; rows name@k at step k" if len(steps) > 1 else "") + ".", "", *table_lines(results)]
    if missing:
        lines += ["", "Not evaluated (no cached result): " + "; ".join(missing)]
    table = "\n".join(lines)
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(table + f"\n\npreset configs/nano.json, model {args.model}, --set {args.set}\n")
    names = list(dict.fromkeys(r[0] for r in runs))
    complete = all(n in results and all(f"{n}@{k}" in results for k in steps[1:]) for n in names if ROWS[n] is not None)
    if steps and complete and any(ROWS[n] is not None for n in names):
        plot_budget(results, names, SimpleNamespace(eval_at=sorted(steps[1:]), steps=steps[0], out=args.out, set=args.set))
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="base,gvu_policy,gvu_frozen,oracle")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--train-seconds", type=float, default=300, help="wall time every run trains for, all at once")
    ap.add_argument("--max-steps", type=int, default=100000,
                    help="the step count the runs are configured with (never reached; under the constant schedule "
                         "it does not change the learning rate)")
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.5],
                    help="also evaluate at these fractions of the common step (rounded down to checkpoints)")
    ap.add_argument("--parallel", type=int, default=7, help="evaluation processes at a time")
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--threads", type=int, default=2, help="torch threads per process")
    ap.add_argument("--eval-prompts", type=int, default=None, help="prompts per split in the evaluation (default: all)")
    ap.add_argument("--understanding-prompts", type=int, default=200)
    ap.add_argument("--out", default="runs/deadline")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override the preset for every row (e.g. --set device=cuda --set batch_prompts=32)")
    ap.add_argument("--report", action="store_true", help="no training or evaluation: the tables from cached results")
    ap.add_argument("--_eval", nargs=3, metavar=("ROW", "SEED", "STEP"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    rows = args.rows.split(",")
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown rows {bad}; choose from {list(ROWS)}")
    if args._eval:
        import torch
        torch.set_num_threads(args.threads)
        n, s, k = args._eval[0], int(args._eval[1]), int(args._eval[2])
        if k and not os.path.exists(os.path.join(run_dir(args, n, s), "checkpoints", f"step_{k:06d}")):
            sys.exit(f"{run_dir(args, n, s)} has no checkpoint at step {k}")  # evaluating never trains
        run_row(n, s, compare_args(args), k or None)
        return
    if args.parallel < 1:
        ap.error(f"--parallel must be >= 1 (got {args.parallel})")
    if any(not 0 < f <= 1 for f in args.fractions):
        ap.error(f"--fractions must lie in (0, 1] (got {args.fractions}): they are fractions of the common step")
    runs = [(n, s) for n in rows for s in (args.seeds if ROWS[n] is not None else [0])]
    from gvu.config import ConfigError
    from gvu.errors import UserError
    try:
        for n, s in runs:
            cfg = row_config(n, s, compare_args(args))
            cfg.validate()  # bad --set values fail here, before any work
            if cfg.schedule != "constant":
                raise ValueError(f"schedule={cfg.schedule}: a run stopped at step k equals a k-step run only under "
                                 "the constant schedule (cosine's decay depends on the total)")
    except (ConfigError, UserError, ValueError) as e:
        ap.error(str(e))
    os.makedirs(args.out, exist_ok=True)
    base = []
    try:
        if not args.report:
            base = [eval_job(args, "base", 0, 0) for n, s in runs
                    if ROWS[n] is None and not os.path.exists(result_path(args, n, s, 0))]  # beside the training
            train_all(args, [r for r in runs if ROWS[r[0]] is not None])
        steps = eval_steps(args, runs)
        if not args.report:
            evaluate_all(args, runs, steps, base)
    finally:  # on an error or Ctrl-C too: no evaluation goes on writing into OUT behind the user's back
        stop(base, signal.SIGKILL)
    print(report(args, runs, steps))


if __name__ == "__main__":
    main()
