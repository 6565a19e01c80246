"""The nano world's commands: `gvu world prompts`, `gvu world render`, and `gvu eval --scorer nano` (cmd_eval,
which gvu/eval/cli.py's `gvu eval` calls for nano-world folders).

Each command checks all of its input (options, every prompt, every image) before the expensive work, and
writes its output through a temporary name that is renamed into place at the end, so a failure or Ctrl-C
leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tqdm import tqdm

from gvu.errors import UserError
from gvu.paths import check_output
from gvu.world import geneval_io as gio
from gvu.world.prompts import HELD_OUT_PAIRS, SPLITS, is_ood, make_suite
from gvu.world.sampler import UnsatisfiableError, sample_scene
from gvu.world.scene import render
from gvu.world.scoring import format_table, score_folders, summarise
from gvu.world.vocab import SUITES

MAX_PROMPTS = 100_000  # -n of `gvu world prompts` (the same cap as train_prompts: gvu.config.MAX_TRAIN_PROMPTS)
MAX_IMAGE_SIZE = 2048  # --image-size of `gvu world render`: one image is 12 MiB of pixels at this size


def register_world(sub: argparse._SubParsersAction) -> None:
    world = sub.add_parser("world", help="the nano world: prompt suites and renderings",
                           description="The nano world: GenEval-format prompt suites and their renderings.")
    wsub = world.add_subparsers(dest="world_command", required=True, metavar="COMMAND")

    p = wsub.add_parser("prompts", help="write a prompt suite (GenEval metadata jsonl)",
                        description="Write N prompts of a suite's split in GenEval's metadata format.")
    p.add_argument("--suite", choices=list(SUITES), default="geneval", help="geneval (6 tags) or genevalpp (7 tags)")
    p.add_argument("--split", choices=SPLITS, default="eval",
                   help="train (RL), eval (GenEval-sized) or ood (held-out compositions)")
    p.add_argument("-n", type=int, default=None,
                   help="number of prompts (default: the benchmark's size, 553 for geneval, 280 for genevalpp)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, required=True, help="the jsonl file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_prompts)

    r = wsub.add_parser("render", help="render a prompt file into a GenEval folder",
                        description="Draw random scenes that satisfy each prompt and write them in GenEval's "
                                    "folder layout: <index:05d>/metadata.jsonl and samples/<k:04d>.png.")
    r.add_argument("metadata", type=Path, help="GenEval metadata jsonl (nano-world prompts)")
    r.add_argument("-o", "--output", type=Path, required=True, help="the folder to write")
    r.add_argument("--images-per-prompt", type=int, default=4, help="GenEval samples 4 (default)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--image-size", type=int, default=64,
                   help=f"pixels a side ({gio.MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE})")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    r.set_defaults(func=cmd_render)


def cmd_prompts(args: argparse.Namespace) -> None:
    if args.n is not None and not 1 <= args.n <= MAX_PROMPTS:
        raise UserError(f"-n must be in 1..{MAX_PROMPTS:,}, got {args.n:,} (a suite of n prompts takes about n / 800 "
                        "seconds to make on a 2-core CPU)")
    gio.refuse_existing_file(args.output, args.overwrite)
    prompts = make_suite(args.suite, args.split, args.n, args.seed, progress=(args.n or 0) > 2000)
    gio.write_files_atomic({args.output: gio.jsonl_text(prompts)})
    print(f"wrote {len(prompts)} {args.suite} {args.split}-split prompts to {args.output}")


def cmd_render(args: argparse.Namespace) -> None:
    if args.images_per_prompt < 1:
        raise UserError(f"--images-per-prompt must be at least 1, got {args.images_per_prompt}")
    if args.image_size < gio.MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be at least {gio.MIN_IMAGE_SIZE}, got {args.image_size}")
    if args.image_size > MAX_IMAGE_SIZE:
        raise UserError(f"--image-size must be at most {MAX_IMAGE_SIZE}, got {args.image_size} (the nano world's shapes "
                        "need no more pixels; GenEval's own images are 512)")
    prompts = gio.read_prompts(args.metadata, nano=True)
    gio.refuse_existing_folder(args.output, args.overwrite, inputs=(args.metadata,))
    # Draw every scene before writing anything (cheap): a prompt no scene satisfies fails here, not halfway.
    scenes = []
    for i, m in enumerate(prompts):
        # Free colours never form a held-out pair, so no image of a train or eval prompt shows an ood composition.
        forbid = frozenset() if is_ood(m) else HELD_OUT_PAIRS
        try:  # one rng per image: image k of prompt i does not depend on the other prompts or images
            scenes.append([sample_scene(m, random.Random(f"{args.seed}/{i}/{k}"), args.image_size, forbid)
                           for k in range(args.images_per_prompt)])
        except UnsatisfiableError as e:
            raise UserError(f"{args.metadata}: prompt {i + 1} ({m['prompt']!r}): {e}") from None
    with gio.atomic_folder(args.output, args.overwrite, inputs=(args.metadata,)) as tmp:
        for i, (m, ss) in enumerate(tqdm(list(zip(prompts, scenes)), desc="render", unit="prompt", disable=None)):
            gio.write_prompt_folder(tmp, i, m, [render(s) for s in ss])
    print(f"rendered {len(prompts)} prompts x {args.images_per_prompt} images into {args.output}")


def cmd_eval(args: argparse.Namespace) -> None:
    if args.image_size is not None and args.image_size < gio.MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be at least {gio.MIN_IMAGE_SIZE}, got {args.image_size}")
    out = args.out if args.out is not None else args.folder / "results.jsonl"
    summary_path = out.parent / "summary.json"
    folders = gio.read_folder(args.folder, nano=True)
    for path in (out, summary_path):  # never over or into a prompt folder this command reads
        check_output(path, [f.path for f in folders])
    gio.refuse_existing_file(out, args.overwrite)
    gio.refuse_existing_file(summary_path, args.overwrite)
    gio.check_images(folders, args.image_size)
    rows = score_folders(folders)
    summary = summarise(rows)
    gio.write_files_atomic({out: gio.jsonl_text(rows), summary_path: json.dumps(summary, indent=2) + "\n"})
    print(format_table(summary))
    print(f"\nresults: {out}\nsummary: {summary_path}")
