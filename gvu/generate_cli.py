"""The commands from a model to a benchmark number: `gvu generate`, `gvu export`, `gvu bench`.

Light at import (argparse only): the libraries (gvu/generate.py, gvu/export.py) load inside the command functions.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from gvu.errors import UserError
from gvu.eval.judge_cli import add_judge_arguments

LAYOUT_CHOICES = ("geneval", "genevalpp", "dpg", "auto")
BENCHES = ("geneval", "genevalpp", "dpg")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", metavar="DIR", help="a checkpoint directory: nano-Janus, Janus-Pro (transformers' "
                                                      "format), X-Omni, or a `gvu export`")
    which.add_argument("--run", metavar="RUN", help="a `gvu train` run folder: its policy at --step")
    p.add_argument("--step", type=int, default=None, help="the run's checkpoint step (default: its latest)")


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", required=True, metavar="PATH",
                   help="GenEval-format .jsonl (GenEval, GenEval++, Flow-GRPO splits, nano-world suites), DPG-Bench's "
                        "prompts folder (<item_id>.txt files), or a text file with one prompt a line")
    p.add_argument("--images-per-prompt", type=int, default=None, metavar="K",
                   help="images a prompt (default: the layout's; geneval 4; genevalpp holds 1 and dpg 4)")
    p.add_argument("--batch-size", type=int, default=16, metavar="M",
                   help="images sampled at once on each process (memory bound; images do not depend on it)")
    p.add_argument("--set", action="append", default=[], metavar="sampling.FIELD=VALUE",
                   help="change a sampling setting (repeatable): cfg_scale, guidance, temperature, top_k, top_p, "
                        "min_p. Default: the run's own settings (--run); for --model, SamplingConfig's defaults with "
                        "the model's guidance scale (Janus), or the xomni-en preset's (X-Omni: no guidance, min-p .03)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts")
    p.add_argument("--seed", type=int, default=0, help="image k of prompt i depends only on (seed, i, k)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: a run's own; else cuda when "
                                                  "available)")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                   help="default: a run's own; else bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def register_generate(sub) -> None:
    p = sub.add_parser("generate", help="sample a model or a run into a benchmark's folder (resumable)",
                       description="Sample a model directory, or a trained run at one of its checkpoints, into a "
                                   "benchmark's folder layout: geneval (<index:05d>/metadata.jsonl + samples/"
                                   "<k:04d>.png), genevalpp (<index>.png) or dpg (<item_id>.png, a 2x2 grid). Run "
                                   "the same command again to resume; under torchrun the prompts are dealt to the "
                                   "ranks. See docs/generate.md.")
    _add_model_flags(p)
    _add_sampling_flags(p)
    p.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES,
                   help="auto: dpg for DPG's folder, genevalpp for plain text or GenEval++ tags, else geneval")
    p.add_argument("--out", required=True, metavar="DIR", help="the image folder")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a folder made by another model or with other settings")
    p.set_defaults(func=cmd_generate)


def register_export(sub) -> None:
    p = sub.add_parser("export", help="a trained run as a standalone transformers checkpoint (LoRA merged)",
                       description="Write a run's checkpoint as a model folder that JanusForConditionalGeneration."
                                   "from_pretrained and `gvu generate --model` load: LoRA merged (or the fine-tuned "
                                   "weights), tokenizer, processor, generation config, backend settings, model card.")
    p.add_argument("run", help="a `gvu train` run folder")
    p.add_argument("--step", type=int, default=None, help="the checkpoint step (default: the latest)")
    p.add_argument("--out", required=True, metavar="DIR", help="the model folder to write")
    p.add_argument("--device", default="cpu", help="where to load and merge (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(func=cmd_export)


def register_bench(sub) -> None:
    p = sub.add_parser("bench", help="generate a benchmark's images and score them (resumable)",
                       description="Generate into OUT/images (the benchmark's layout; resumes) and score with "
                                   "`gvu eval OUT/images --scorer BENCH`, writing OUT/scores. Options for the scorer "
                                   "go last, after --scorer-args.")
    p.add_argument("bench", choices=BENCHES)
    _add_model_flags(p)
    _add_sampling_flags(p)
    p.add_argument("--out", required=True, metavar="DIR", help="OUT/images and OUT/scores")
    p.add_argument("--overwrite", action="store_true", help="replace images made by another model or settings")
    g = p.add_argument_group("scorer (passed on to gvu eval)")
    g.add_argument("--detector", default=None, help="geneval: the Mask2Former directory (docs/geneval.md)")
    g.add_argument("--clip", default=None, help="geneval: the CLIP directory")
    add_judge_arguments(p)
    p.add_argument("--scorer-args", nargs=argparse.REMAINDER, default=[], metavar="...",
                   help="everything after this goes to `gvu eval` as it is (its other options, such as geneval's "
                        "--device and --batch-size, which name generation's own options here)")
    p.set_defaults(func=cmd_bench)


# ----------------------------------------------------------------------------------------------- commands

def _plan(args, layout: str, out: str):
    from gvu.generate import plan_generation

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1 (got {args.threads})")
    return plan_generation(prompts=args.prompts, out=out, layout=layout, model=args.model, run=args.run,
                           step=args.step, images=args.images_per_prompt, batch_size=args.batch_size, sets=args.set,
                           limit=args.limit, seed=args.seed, device=args.device, dtype=args.dtype,
                           overwrite=args.overwrite)


def _generate(req, threads: int | None):
    """run_generation inside torchrun's process group (if any), torn down before the interpreter exits."""
    import torch

    from gvu import dist
    from gvu.generate import run_generation

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        result = run_generation(req)
        dist.barrier()
    finally:
        dist.cleanup()  # gloo's threads can abort the process if left to exit-time destructors
    return result


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def cmd_generate(args) -> None:
    req = _plan(args, args.layout, args.out)
    result = _generate(req, args.threads)
    if _is_rank0():
        print(f"{req.layout} folder {req.out}: {result.generated} prompts generated ({result.images} images, "
              f"{result.images_per_s:.2f} images/s), {result.skipped} already complete")


def cmd_export(args) -> None:
    from gvu.export import export_run

    out = export_run(args.run, args.step, args.out, overwrite=args.overwrite, device=args.device)
    print(f"exported to {out}: JanusForConditionalGeneration.from_pretrained({str(out)!r}) or "
          f"gvu generate --model {out}")


def scorer_for(bench: str, req) -> str:
    """The scorer `gvu eval` runs: the benchmark's, except the nano world's exact evaluator for nano-world prompts
    (what `gvu eval` picks by default for them)."""
    from gvu.evaluate import world_judgeable

    metadata = [it.metadata for it in req.items]
    if bench == "geneval" and all(m is not None for m in metadata) and world_judgeable(metadata):
        return "nano"
    return bench


# the `gvu eval` options that `gvu bench` takes itself (same names) and passes on when given
FORWARDED = ("detector", "clip", "judge", "questions", "concurrency", "timeout", "retries", "backoff",
             "max_new_tokens", "judge_batch", "judge_device", "dry_run")


def forwarded_options(args) -> list[str]:
    """bench's scorer options that differ from `gvu eval`'s defaults, as `gvu eval` flags."""
    defaults = parse_eval(["eval", "folder"])
    out: list[str] = []
    for dest in FORWARDED:
        value = getattr(args, dest)
        if value == getattr(defaults, dest):
            continue
        flag = "--" + dest.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


def eval_argv(images: Path, scores: Path, scorer: str, extra: list[str]) -> list[str]:
    """The `gvu eval` command line that scores a bench's images. The nano scorer writes one results file
    (summary.json beside it) and scores anew in seconds, so it replaces its results; the benchmark scorers write a
    results folder and resume from their own cache of scored images, so that is kept."""
    if scorer == "nano":
        return ["eval", str(images), "--scorer", scorer, "--out", str(scores / "results.jsonl"), "--overwrite", *extra]
    return ["eval", str(images), "--scorer", scorer, "--out", str(scores), *extra]


def parse_eval(argv: list[str]) -> argparse.Namespace:
    """A `gvu eval` command line parsed by gvu's own parser (a bad scorer option stops here, before generating)."""
    from gvu.cli import build_parser

    return build_parser().parse_args(argv)


def run_eval(argv: list[str]) -> None:
    """Run a `gvu eval` command line in this process."""
    args = parse_eval(argv)
    args.func(args)


def cmd_bench(args) -> None:
    out = Path(args.out)
    images, scores = out / "images", out / "scores"
    req = _plan(args, args.bench, str(images))
    argv = eval_argv(images, scores, scorer_for(args.bench, req), forwarded_options(args) + args.scorer_args)
    parse_eval(argv)
    _generate(req, args.threads)
    if _is_rank0():  # under torchrun the ranks share the generation; one process scores
        print(f"scoring: gvu {' '.join(argv)}")
        run_eval(argv)
