"""`gvu eval` (the nano world's exact scorer, GenEval's, or the judged GenEval++ and DPG-Bench) and
`gvu convert geneval-detector`.

The register functions import nothing heavy: torch and transformers load inside the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gvu.errors import UserError
from gvu.paths import check_output
from gvu.eval.judge_cli import JUDGED_SCORERS, add_judge_arguments

SCORERS = ("nano", "geneval", "genevalpp", "dpg")


def register_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="score a benchmark folder: nano (exact), geneval, genevalpp or dpg (judged)",
                       description="Score every image of a benchmark folder. A GenEval folder (<index:05d>/"
                                   "metadata.jsonl, samples/<k:04d>.png): --scorer nano judges nano-world prompts "
                                   "exactly; --scorer geneval applies GenEval's rules to a Mask2Former detector and "
                                   "CLIP (transformers, local directories; docs/geneval.md). A GenEval++ folder "
                                   "(<index>.png + prompts.jsonl) or a DPG-Bench folder (<item_id>.png 2x2 grids + "
                                   "prompts.jsonl), as `gvu generate` writes them: --scorer genevalpp or dpg with "
                                   "--judge (docs/judges.md). Prints per-tag accuracy and the overall score.")
    e.add_argument("folder", type=Path, help="the benchmark folder (GenEval, GenEval++ or DPG-Bench layout)")
    e.add_argument("--scorer", choices=SCORERS, default=None,
                   help="nano (the exact evaluator), geneval (Mask2Former + CLIP), genevalpp or dpg (a judge "
                        "model); default: the layout's, and for GenEval folders nano for nano-world prompts, "
                        "geneval for COCO prompts")
    e.add_argument("--out", type=Path, default=None,
                   help="nano: the results jsonl (default FOLDER/results.jsonl; summary.json goes beside it); "
                        "geneval: the results folder (default FOLDER/geneval: results.jsonl in GenEval's format, "
                        "summary.json, summary.md, cache.jsonl); genevalpp/dpg: the results folder (default "
                        "FOLDER/eval-<scorer>: verdicts, summary)")
    e.add_argument("--overwrite", action="store_true", help="replace existing results (geneval: and its cache)")
    e.add_argument("--image-size", type=int, default=None,
                   help="nano: required image side in pixels (default: all images share the first one's size)")
    e.add_argument("--detector", type=Path, default=None,
                   help="geneval: a transformers Mask2Former directory with COCO's 80 classes (from `gvu convert "
                        "geneval-detector`, or facebook/mask2former-swin-small-coco-instance)")
    e.add_argument("--clip", type=Path, default=None,
                   help="geneval: a transformers CLIP directory (openai/clip-vit-large-patch14)")
    e.add_argument("--device", default=None, help="geneval: torch device (default: cuda when available, else cpu)")
    e.add_argument("--batch-size", type=int, default=4, help="geneval: images per detector batch (default 4)")
    add_judge_arguments(e)
    e.set_defaults(func=cmd_eval)


def register_convert(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert", help="convert third-party checkpoints into transformers directories",
                       description="Convert third-party checkpoints into transformers model directories.")
    csub = c.add_subparsers(dest="convert_command", required=True, metavar="WHAT")
    g = csub.add_parser("geneval-detector", help="GenEval's mmdet Mask2Former checkpoint -> transformers",
                        description="Map GenEval's object detector, mmdet's "
                                    "mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco .pth, onto transformers' "
                                    "Mask2FormerForUniversalSegmentation and write a model directory (config, "
                                    "safetensors, image processor config) for `gvu eval --scorer geneval`.")
    g.add_argument("checkpoint", type=Path, help="the mmdet checkpoint (.pth) from GenEval's download_models.sh")
    g.add_argument("--out", type=Path, required=True, help="the model directory to write")
    g.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    g.set_defaults(func=cmd_convert_detector)


def pick_scorer(folder: Path) -> str:
    """A folder `gvu generate` wrote names its layout in generation.json: genevalpp and dpg folders go to their
    judged scorers. A GenEval folder goes to nano when its prompts name nano-world shapes, to geneval when they name
    only other (COCO) classes; one mixing both goes to nano, whose checks then name the COCO prompts."""
    import json

    try:
        layout = json.loads((folder / "generation.json").read_text()).get("layout")
    except (OSError, ValueError, AttributeError):
        layout = None
    if layout in JUDGED_SCORERS:
        return layout
    from gvu.world import geneval_io as gio
    from gvu.world.vocab import SHAPES

    classes = {r["class"] for f in gio.read_folder(folder, nano=False)
               for key in ("include", "exclude") for r in f.metadata.get(key, [])}
    return "nano" if classes & set(SHAPES) else "geneval"


def cmd_eval(args: argparse.Namespace) -> None:
    scorer = args.scorer or pick_scorer(args.folder)
    if scorer in JUDGED_SCORERS:
        from gvu.eval import judge_cli

        args.scorer = scorer
        judge_cli.run(args)
        return
    if scorer == "nano":
        from gvu.world.cli import cmd_eval as nano_eval

        nano_eval(args)
        return
    if args.detector is None or args.clip is None:
        missing = " and ".join(f for f, v in (("--detector", args.detector), ("--clip", args.clip)) if v is None)
        raise UserError(f"--scorer geneval needs {missing}: local transformers directories of Mask2Former "
                        f"(COCO instances) and CLIP ViT-L/14; docs/geneval.md says how to get them")
    from gvu.eval.geneval.scorer import score_folder
    from gvu.world.scoring import format_table

    out = args.out if args.out is not None else args.folder / "geneval"
    prompt_folders = [p for p in args.folder.iterdir() if p.is_dir() and p.name.isdigit()]
    check_output(out, prompt_folders + [args.detector, args.clip], folder=True)  # inputs are never outputs
    summary = score_folder(args.folder, out, args.detector, args.clip, args.device, args.batch_size, args.overwrite)
    print(f"detector: {summary['detector']}\n")
    print(format_table(summary))
    print(f"\nresults: {out / 'results.jsonl'}\nsummary: {out / 'summary.md'}")


def cmd_convert_detector(args: argparse.Namespace) -> None:
    from gvu.eval.geneval.convert import convert_checkpoint

    n = convert_checkpoint(args.checkpoint, args.out, args.overwrite)
    print(f"converted {n} tensors of {args.checkpoint} into {args.out}")
