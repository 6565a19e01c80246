"""Inputs are never outputs: checks on an output path against the files and folders a command reads.

A command with --out (and --overwrite) must never write over, or into, what it reads: `gvu eval --out
FOLDER/00000/metadata.jsonl --overwrite` would replace a prompt's metadata, and a run folder inside a model folder
would mix a run's files with the model's. These checks run before any model loads, as does the check that the
output can be written at all (so an unwritable --out is found in a second, not after minutes of loading).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from gvu.errors import UserError


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def refuse_overlap(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], what: str = "--out",
                   allow_input_inside: bool = False) -> None:
    """UserError when `output` is one of `inputs`, lies inside an input folder, or (unless allow_input_inside) is a
    folder that holds an input. Paths are compared after resolving links, so a link to an input counts as it."""
    out = _real(output)
    for src in inputs:
        if src is None or str(src) == "":
            continue
        inp = _real(src)
        if out == inp:
            raise UserError(f"{what} {output} is this command's input {src}: choose another {what}")
        if out.is_relative_to(inp):
            raise UserError(f"{what} {output} lies inside this command's input {src}: writing there could replace "
                            f"what it reads; choose a {what} outside it")
        if not allow_input_inside and inp.is_relative_to(out):
            raise UserError(f"{what} {output} holds this command's input {src}: writing (or --overwrite) there "
                            f"could replace what it reads; choose another {what}")


def check_writable(output: str | os.PathLike, what: str = "--out", folder: bool = False) -> None:
    """UserError unless `output` can be written: an existing file or folder this process may write, or a new path
    whose nearest existing parent is a folder it may write into. folder: `output` is meant to be a folder."""
    path = Path(os.path.abspath(output))
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{what} {output} is a file: give a folder")
        if not folder and path.is_dir():
            raise UserError(f"{what} {output} is a folder: give a file path")
        if not os.access(path, os.W_OK | (os.X_OK if path.is_dir() else 0)):
            raise UserError(f"{what} {output}: no permission to write it")
        return
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {output}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {output}: no permission to write in {parent}")


def check_output(output: str | os.PathLike, inputs: Iterable[str | os.PathLike | None], what: str = "--out",
                 folder: bool = False, allow_input_inside: bool = False) -> None:
    """refuse_overlap and check_writable at once: the check every command with an output makes before its work."""
    refuse_overlap(output, inputs, what, allow_input_inside)
    check_writable(output, what, folder)
