"""The judge options of `gvu eval --scorer genevalpp|dpg` and `gvu bench`, and the function that runs a judged
scorer on a generated folder.

`add_judge_arguments(parser)` adds the options; `run(args)` reads args.scorer ("genevalpp" or "dpg"), args.folder,
args.out (a folder, or None for FOLDER/eval-<scorer>), args.overwrite and the judge options. Every
input is checked (folder layout, question file, judge spec, API key, self-judging) before a model is loaded or a
request is sent.
"""

from __future__ import annotations

import argparse
import json
import os

from gvu.errors import UserError
from gvu.paths import check_output

JUDGED_SCORERS = ("genevalpp", "dpg")


def add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("judge (GenEval++ and DPG-Bench)")
    g.add_argument("--judge", metavar="SPEC",
                   help="openai:MODEL (an OpenAI-compatible endpoint: OPENAI_BASE_URL, default "
                        "https://api.openai.com/v1, and OPENAI_API_KEY, not needed for a server on localhost), "
                        "e.g. openai:gpt-4.1 as in the paper; or local:DIR (a transformers vision-language model)")
    g.add_argument("--questions", metavar="CSV", help="DPG-Bench's dpg_bench.csv (from TencentQQGYLab/ELLA)")
    g.add_argument("--concurrency", type=int, default=8, metavar="N", help="parallel API requests (default 8)")
    g.add_argument("--timeout", type=float, default=60.0, metavar="S", help="per-request timeout in s (default 60)")
    g.add_argument("--retries", type=int, default=5, metavar="N",
                   help="retries of a request after a 429, a 5xx or a timeout, with exponential backoff (default 5)")
    g.add_argument("--backoff", type=float, default=1.0, metavar="S",
                   help="first backoff in s, doubled each retry, with jitter (default 1)")
    g.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="reply length (default: 200 for genevalpp, the protocol's max_tokens; 10 for dpg)")
    g.add_argument("--judge-batch", type=int, default=8, metavar="N", help="batch size of a local judge (default 8)")
    g.add_argument("--judge-device", default="cpu", help="device of a local judge, e.g. cuda:0 (default cpu)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the first request in full (the image as its size) and the request count; send nothing")


def check_args(args) -> None:
    if args.scorer not in JUDGED_SCORERS:
        raise UserError(f"--scorer {args.scorer}: the judged scorers are {', '.join(JUDGED_SCORERS)}")
    if not args.judge:
        raise UserError(f"--scorer {args.scorer} needs --judge openai:MODEL or --judge local:DIR")
    for name in ("concurrency", "retries", "judge_batch"):
        if getattr(args, name) < (0 if name == "retries" else 1):
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be positive")
    if args.timeout <= 0:
        raise UserError(f"--timeout {args.timeout}: must be positive")
    if args.scorer == "dpg" and not args.questions:
        raise UserError("--scorer dpg needs --questions dpg_bench.csv (from TencentQQGYLab/ELLA, dpg_bench/)")


def plan(args) -> tuple[list, str]:
    """All requests still to send (after the cache) and a one-line description; used by --dry-run and the cost
    estimate. Reads the folder, so it runs before any judge exists."""
    from gvu.eval import dpg, genevalpp
    from gvu.eval.judge_io import VerdictCache
    out = output_folder(args)
    tokens = max_tokens(args)
    if args.scorer == "genevalpp":
        prompts = genevalpp.check_folder(args.folder)
        cache = VerdictCache(os.path.join(out, genevalpp.VERDICTS_FILE), "index", judge_name(args),
                             overwrite=args.overwrite, read_only=True)
        todo, _ = genevalpp.pending_requests(args.folder, prompts, cache)
        return [lambda i=i: genevalpp.make_request(args.folder, prompts[i], i, tokens) for i in todo], \
            f"{len(todo)} of {len(prompts)} images to judge (x up to {genevalpp.TRIES} tries without JSON)"
    items = dpg.read_questions(args.questions)
    ids = dpg.check_folder(args.folder, items)
    cache = VerdictCache(os.path.join(out, dpg.ANSWERS_FILE), "item_id", judge_name(args),
                         overwrite=args.overwrite, read_only=True)
    todo = [i for i in ids if os.path.isfile(os.path.join(args.folder, f"{i}.png"))
            and not dpg.cached_for_file(cache, args.folder, i)]
    makers = [lambda i=i, k=k: dpg.requests_for(args.folder, i, items[i], tokens)[k]
              for i in todo for k in range(dpg.CROPS * len(items[i].question))]
    return makers, f"{len(todo)} of {len(ids)} grids to judge ({len(makers)} questions on crops)"


def judge_name(args) -> str:
    from gvu.eval.judges import DEFAULT_BASE_URL, parse_judge_spec
    kind, target = parse_judge_spec(args.judge)
    if kind == "openai":
        base = (os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        return f"openai:{target}@{base}"
    return f"local:{os.path.realpath(target)}"


def max_tokens(args) -> int:
    from gvu.eval import dpg, genevalpp
    if args.max_new_tokens is not None:
        return args.max_new_tokens
    return genevalpp.MAX_TOKENS if args.scorer == "genevalpp" else dpg.MAX_TOKENS


def output_folder(args) -> str:
    return args.out or os.path.join(args.folder, f"eval-{args.scorer}")


def print_estimate(makers: list, description: str, args) -> None:
    """Request count and an estimated token count (first request's size times the count; replies at most
    max_tokens each) for an API judge."""
    from gvu.eval.judges import estimate_image_tokens, estimate_text_tokens
    print(f"judge {judge_name(args)}: {description}")
    if not makers:
        return
    first = makers[0]()
    prompt = estimate_text_tokens((first.system or "") + first.user)
    if first.image is not None:
        prompt += estimate_image_tokens(*first.image.size)
    n = len(makers)
    print(f"estimate: {n} requests, about {n * prompt:,} prompt tokens ({prompt} each, image at OpenAI's high-detail "
          f"rate) and at most {n * first.max_tokens:,} completion tokens (before retries)")


def dry_run(makers: list, description: str, args) -> None:
    from gvu.eval.judges import chat_payload, jpeg_base64, parse_judge_spec, redact_images
    print(f"dry run, nothing sent: {description}")
    if not makers:
        return
    request = makers[0]()
    kind, target = parse_judge_spec(args.judge)
    payload = chat_payload(target if kind == "openai" else "(local model)", request,
                           None if request.image is None else jpeg_base64(request.image))
    print(json.dumps(redact_images(payload), indent=1, ensure_ascii=False))


def evaluated_models(args) -> list[str]:
    from gvu.eval.judge_io import read_generation_models
    models = read_generation_models(args.folder)
    for name in ("model", "base_model"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            models.append(value)
    return models


def judged_inputs(args) -> list[str]:
    """What a judged scorer reads: the folder's images and prompts.jsonl, the question file, a local judge."""
    names = [n for n in os.listdir(args.folder) if n.endswith(".png") or n == "prompts.jsonl"]
    spec = args.judge or ""
    local = [spec.split(":", 1)[1]] if spec.startswith("local:") else []
    return [os.path.join(args.folder, n) for n in names] + [args.questions] + local


def run(args) -> dict | None:
    """Score args.folder with a judge; returns the summary (None for --dry-run)."""
    from gvu.eval import dpg, genevalpp
    from gvu.eval.judges import DEFAULT_BASE_URL, build_judge, parse_judge_spec, refuse_self_judging, resolve_api_key
    check_args(args)
    kind, target = parse_judge_spec(args.judge)
    if kind == "local":
        refuse_self_judging(target, evaluated_models(args))
    makers, description = plan(args)  # checks the folder layout and the question file
    check_output(output_folder(args), judged_inputs(args), folder=True)  # inputs are never outputs
    if args.dry_run:
        dry_run(makers, description, args)
        if kind == "openai":
            print_estimate(makers, description, args)
        return None
    if kind == "openai":
        resolve_api_key(os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL)  # no key: an error before any work
        print_estimate(makers, description, args)
    judge = build_judge(args.judge, device=args.judge_device, concurrency=args.concurrency, timeout_s=args.timeout,
                        retries=args.retries, backoff_s=args.backoff, batch_size=args.judge_batch)
    out = output_folder(args)
    if args.scorer == "genevalpp":
        summary = genevalpp.score_folder(args.folder, out, judge, overwrite=args.overwrite,
                                         max_tokens=max_tokens(args))
        print(f"GenEval++ overall {summary['overall']:.4f} (judge {judge.name}); results in {out}")
    else:
        summary = dpg.score_folder(args.folder, out, judge, args.questions, overwrite=args.overwrite,
                                   max_tokens=max_tokens(args))
        print(f"DPG-Bench score {summary['dpg_score']:.2f} (judge {judge.name}); results in {out}")
    if judge.is_api:
        print(f"judge usage: {judge.stats.as_dict()}")
    return summary
