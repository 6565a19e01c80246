"""`gvu eval` (the nano world's exact scorer or GenEval's) and `gvu convert geneval-detector`.

The register functions import nothing heavy: torch and transformers load inside the commands.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gvu.errors import UserError

SCORERS = ("nano", "geneval")


def register_eval(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="score a GenEval folder (nano world: exact; real prompts: GenEval's detector)",
                       description="Score every image of a GenEval folder (<index:05d>/metadata.jsonl, "
                                   "samples/<k:04d>.png). --scorer nano judges nano-world prompts exactly; "
                                   "--scorer geneval applies GenEval's rules to a Mask2Former detector and CLIP "
                                   "(transformers, local directories; see docs/geneval.md). Prints per-tag "
                                   "accuracy and the overall score (the unweighted mean over tags).")
    e.add_argument("folder", type=Path, help="GenEval folder: <index:05d>/metadata.jsonl, samples/<k:04d>.png")
    e.add_argument("--scorer", choices=SCORERS, default=None,
                   help="nano (the exact evaluator) or geneval (Mask2Former + CLIP); default: nano for nano-world "
                        "prompts, geneval for COCO prompts")
    e.add_argument("--out", type=Path, default=None,
                   help="nano: the results jsonl (default FOLDER/results.jsonl; summary.json goes beside it); "
                        "geneval: the results folder (default FOLDER/geneval: results.jsonl in GenEval's format, "
                        "summary.json, summary.md, cache.jsonl)")
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
    """nano when the folder's prompts name nano-world shapes, geneval when they name only other (COCO) classes.
    A folder mixing both goes to nano, whose checks then name the COCO prompts."""
    from gvu.world import geneval_io as gio
    from gvu.world.vocab import SHAPES

    classes = {r["class"] for f in gio.read_folder(folder, nano=False)
               for key in ("include", "exclude") for r in f.metadata.get(key, [])}
    return "nano" if classes & set(SHAPES) else "geneval"


def cmd_eval(args: argparse.Namespace) -> None:
    scorer = args.scorer or pick_scorer(args.folder)
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
    summary = score_folder(args.folder, out, args.detector, args.clip, args.device, args.batch_size, args.overwrite)
    print(f"detector: {summary['detector']}\n")
    print(format_table(summary))
    print(f"\nresults: {out / 'results.jsonl'}\nsummary: {out / 'summary.md'}")


def cmd_convert_detector(args: argparse.Namespace) -> None:
    from gvu.eval.geneval.convert import convert_checkpoint

    n = convert_checkpoint(args.checkpoint, args.out, args.overwrite)
    print(f"converted {n} tensors of {args.checkpoint} into {args.out}")
