"""The `gvu` command.

Each command group lives in its own module and joins the parser through a `register(subparsers)` function
listed in REGISTRARS; it adds its sub-parser(s) and sets `func` (called with the parsed args) on each. A
register function must import lightly (no torch at import time), so that `gvu --help` and the nano-world
commands stay fast; heavy imports belong inside the command's function.

Errors: a UserError (bad input, an existing output) prints `gvu: error: <message>` and exits with status 2,
like argparse's own usage errors; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Callable

from gvu import __version__
from gvu.errors import UserError
from gvu import generate_cli, model_cli
from gvu.eval import cli as eval_cli
from gvu.world import cli as world_cli

REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    world_cli.register_world, eval_cli.register_eval, eval_cli.register_convert,
    model_cli.register_pretrain, model_cli.register_train, model_cli.register_score,
    generate_cli.register_generate, generate_cli.register_export, generate_cli.register_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gvu", description="GvU: RL for unified multimodal models with an understanding-based reward, "
                                "and a nano world of coloured shapes to measure it exactly.")
    parser.add_argument("--version", action="version", version=f"gvu {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRARS:
        register(sub)
    return parser


def _terminated(signum, frame) -> None:
    """SIGTERM (a scheduler's stop, `kill`) as an exception, so that cleanup runs as it does for Ctrl-C: temporary
    outputs are removed, a run folder's lock is let go."""
    raise SystemExit(128 + signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return _run(args)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    try:
        args.func(args)
    except UserError as e:
        print(f"gvu: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gvu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error of ours
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
