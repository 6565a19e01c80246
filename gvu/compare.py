"""The reward comparison's rows: each row is the nano preset with a few `--set` overrides (its reward), trained
with `gvu train`'s own train() and then evaluated the same way (eval and ood splits of nano-GenEval, 4 images a
prompt, fixed seeds, and the 4-way caption choice), its result cached in the row's folder OUT/<row>-s<seed>/.
`python -m experiments.compare_rewards` trains the rows one after another; `python -m experiments.deadline_compare`
trains them side by side for a fixed time and evaluates every run at the step all of them reached.

`args` below is the comparison's argparse namespace; the fields read are out, set, steps, model, threads,
eval_prompts, understanding_prompts, extend and eval_cfg.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np

from gvu.errors import UserError

ROWS = {  # row name -> its `--set` overrides of the nano preset; None: the base model, evaluated untrained
    "base": None,
    "gvu_policy": ["reward.reduction=geometric_mean", "reward.judge=policy"],
    "gvu_frozen": ["reward.reduction=geometric_mean", "reward.judge=frozen"],
    "gvu_product": ["reward.reduction=product", "reward.judge=policy"],
    "gvu_surprisal": ["reward.reduction=geometric_mean", "reward.judge=policy", "reward.token_weights=surprisal"],
    "oracle": ["reward.kind=oracle"],
}


def understanding(backend, n_prompts: int) -> float:
    """Caption choice (gvu.nano_eval.bench_understanding) on the first n_prompts eval prompts' scenes."""
    from gvu.nano_eval import bench_understanding, eval_scenes

    # held-out pairs allowed in open colours: the scenes every cached result of this column was measured on, so that
    # new rows compare with them (benchmarks.nano_model_eval's default draws them as the world renders eval images)
    scenes = eval_scenes(n_prompts, seed=99, held_out_colours=True)
    return bench_understanding(backend, scenes, seed=5)["choose_1_of_4_sum_logp"]["overall"]


def row_sets(name: str, seed: int, args) -> list[str]:
    """The `--set` overrides of the nano preset that make a row's training config."""
    sets = (ROWS[name] or []) + list(args.set) + [
        f"seed={seed}", f"steps={args.steps}", "final_eval=false", "eval_every=0", "grid_every=0",
        f"model={args.model}", f"threads={args.threads}"]
    if args.eval_prompts:
        sets.append(f"final_eval_prompts={args.eval_prompts}")
    return sets


def row_config(name: str, seed: int, args):
    """The row's resolved TrainConfig (the nano preset, then row_sets), as `gvu train --preset nano --set ...` makes it,
    with dtype=auto made concrete on this machine: every row of a table trains and is evaluated in one dtype (a row
    already trained in another is refused on resume, "the config differs": add --set dtype=... to match it)."""
    from gvu.master_weights import resolve_dtype
    from gvu.model_cli import resolve_train_config

    return resolve_dtype(resolve_train_config("nano", None, row_sets(name, seed, args)))


def run_row(name: str, seed: int, args, step: int | None = None) -> dict:
    """Train (or resume) one row and evaluate its final policy, or its checkpoint at `step`. Cached in the row's
    folder; a cached result made with other --set overrides is refused rather than mixed into the table."""
    from gvu.models.janus import JanusBackend
    from gvu.run_io import save_json
    from gvu.train import final_tables, load_trained, train

    out = os.path.join(args.out, f"{name}-s{seed}")
    done = os.path.join(out, f"result{f'-step{step}' if step else ''}{cfg_suffix(args)}.json")
    if os.path.exists(done):
        with open(done) as f:
            res = json.load(f)
        if recipe_sets(res.get("sets", [])) != recipe_sets(args.set):
            raise UserError(f"{done} was made with --set {res.get('sets', [])}, not {list(args.set)}: use another --out")
        return res
    cfg = row_config(name, seed, args)
    if args.extend and ROWS[name] is not None and not os.path.exists(out):
        extend_from(os.path.join(args.extend, f"{name}-s{seed}"), out, args)
    if ROWS[name] is None:
        import torch

        # where and in the precision the trained rows are evaluated (--set device=, --set dtype=): load_trained hands
        # a trained row back in the run's dtype (bf16 for bf16 full fine-tuning's fp32 masters)
        backend = JanusBackend.from_pretrained(cfg.model, device=cfg.device, dtype=getattr(torch, cfg.dtype))
        os.makedirs(out, exist_ok=True)
    else:
        if not (step and os.path.exists(os.path.join(out, "checkpoints", f"step_{step:06d}"))):
            train(cfg, out, resume=os.path.exists(os.path.join(out, "config.json")), progress=True)
        backend = load_trained(out, step)
    if args.eval_cfg:  # training used cfg's guidance; only the evaluation changes
        cfg = replace(cfg, sampling=replace(cfg.sampling, cfg_scale=args.eval_cfg, guidance=True))
    tables = final_tables(backend, cfg)
    res = {"eval": tables["eval"]["overall"], "ood": tables["ood"]["overall"],
           "eval_reward": tables["eval"]["reward"], "per_tag": tables["eval"]["per_tag"],
           "understanding": understanding(backend, args.understanding_prompts), "sets": list(args.set)}
    save_json(os.path.dirname(done), os.path.basename(done), res)  # atomic: a stopped evaluation leaves no result
    return res


def cfg_suffix(args) -> str:
    """'-cfgS' in the names of results and tables made with --eval-cfg S, so they never pass for the runs' own."""
    return f"-cfg{args.eval_cfg:g}" if args.eval_cfg else ""


def recipe_sets(sets: list[str]) -> list[str]:
    """The --set overrides that change results (speed-only fields such as evaluator_workers do not), sorted."""
    from gvu.runs import SPEED_ONLY
    return sorted(s for s in sets if s.split("=", 1)[0] not in SPEED_ONLY)


def extend_problem(src: str, args) -> tuple[str | None, int]:
    """Why --extend cannot start a row from `src` (None when it can), and that run's step count."""
    if not os.path.exists(os.path.join(src, "config.json")):
        return f"--extend: {src} holds no run; give the --out of a shorter comparison with the same rows and seeds", 0
    with open(os.path.join(src, "config.json")) as f:
        old_steps = json.load(f)["steps"]
    if old_steps >= args.steps:
        return f"--extend: {src} already has {old_steps} steps; --steps must be larger", old_steps
    return None, old_steps


def extend_from(src: str, out: str, args) -> None:
    """Start a row from a shorter run of the same recipe (--extend): copy its folder, keep its result as the result
    at its step count (and its results at earlier steps), and let train() resume it to --steps (exact under the
    constant schedule: gvu.runs.extendable)."""
    import shutil

    problem, old_steps = extend_problem(src, args)
    if problem:
        raise UserError(problem)
    shutil.rmtree(out + ".tmp", ignore_errors=True)  # left by a copy that was stopped
    shutil.copytree(src, out + ".tmp")  # its results at earlier steps stay valid: the same weights at those steps
    for name in os.listdir(out + ".tmp"):  # result.json and result-cfgS.json (--eval-cfg) are results at old_steps
        if name.startswith("result") and name.endswith(".json") and not name.startswith("result-step"):
            os.replace(os.path.join(out + ".tmp", name),
                       os.path.join(out + ".tmp", name.replace("result", f"result-step{old_steps}", 1)))
    os.replace(out + ".tmp", out)


def table_lines(results: dict) -> list[str]:
    """The comparison's two markdown tables: per row (name -> results over seeds) mean ± half the range, then the
    per-tag means."""
    lines = ["| run | nano-GenEval eval | ood | understanding (caption choice) | GvU reward (eval) | seeds |",
             "|---|---|---|---|---|---|"]
    for name, rs in results.items():
        def cell(k):
            v = np.array([r[k] for r in rs])
            return f"{v.mean():.3f} ± {(v.max() - v.min()) / 2:.3f}" if len(v) > 1 else f"{v[0]:.3f}"
        lines.append(f"| {name} | {cell('eval')} | {cell('ood')} | {cell('understanding')} | {cell('eval_reward')} | {len(rs)} |")
    tags = sorted({t for rs in results.values() for r in rs for t in r["per_tag"]})
    lines += ["", "By tag (eval split; mean over seeds):", "",
              "| run | " + " | ".join(tags) + " |", "|---" * (len(tags) + 1) + "|"]
    for name, rs in results.items():
        means = [np.mean([r["per_tag"][t] for r in rs if t in r["per_tag"]]) for t in tags]
        lines.append(f"| {name} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return lines


def plot_budget(results: dict, rows: list[str], args) -> str:
    """OUT/budget.png: each training row's eval score and GvU reward against training steps (--eval-at and --steps),
    one point per seed and a line through the means; base, when among the rows, as step 0 and a dashed line."""
    import matplotlib
    matplotlib.use("Agg")  # no display: the plot only goes to a file
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = args.eval_at + [args.steps]
    for i, name in enumerate(r for r in rows if ROWS[r] is not None):
        per_step = [results[f"{name}@{s}"] if s != args.steps else results[name] for s in steps]
        xs, ys = (([0], [results["base"]]) if "base" in results else ([], []))  # every row starts at base
        for a, key in zip(ax, ("eval", "eval_reward")):
            for s, rs in zip(steps, per_step):
                a.plot([s] * len(rs), [r[key] for r in rs], ".", color=f"C{i}", alpha=0.5)
            a.plot(xs + steps, [np.mean([r[key] for r in rs]) for rs in ys + per_step], "-", color=f"C{i}", label=name)
    if "base" in results:
        for a, key in zip(ax, ("eval", "eval_reward")):
            a.axhline(results["base"][0][key], color="grey", ls="--", lw=0.8, label="base")
    ax[0].set(title="nano-GenEval, eval split (exact evaluator)", xlabel="training step", ylabel="overall")
    ax[1].set(title="GvU reward, each model judging its own eval images", xlabel="training step", ylabel="geometric mean")
    ax[0].legend()
    fig.suptitle(f"--set {' '.join(args.set) or '(preset)'}; points: seeds, lines: their mean", fontsize=9)
    fig.tight_layout()
    path = os.path.join(args.out, "budget.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
