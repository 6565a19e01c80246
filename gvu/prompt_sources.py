"""The prompt files `gvu generate` reads, whatever their format, as one list of typed prompt items.

Three formats:
  GenEval-format jsonl   one metadata object a line ({tag, include, exclude?, prompt}): GenEval's
                         evaluation_metadata.jsonl, GenEval++'s Geneval++.jsonl, the Flow-GRPO splits, nano-world suites
  DPG-Bench's folder     <item_id>.txt, one dense prompt a file (TencentQQGYLab/ELLA dpg_bench/prompts)
  plain text             one prompt a line (blank lines skipped)

A prompt's index is its place in the input (the jsonl line among the prompts, the text line among the prompts, the
DPG file in natural order of item ids); generate.py seeds image k of prompt i by (seed, index, k), so the index is
what keeps a prompt's images the same under --limit, other batch sizes or ranks.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from gvu.errors import UserError

KINDS = ("geneval_jsonl", "dpg_folder", "text")


@dataclass(frozen=True)
class PromptItem:
    """One prompt of the input."""

    index: int  # 0-based place in the input: GenEval's folder number, GenEval++'s file name, the seed's prompt id
    prompt: str  # the text the model is given
    item_id: str  # DPG-Bench's item id (the .txt file's stem); str(index) for the other formats
    metadata: dict | None = None  # the GenEval metadata line (jsonl inputs); None for DPG and plain text


@dataclass(frozen=True)
class PromptSource:
    """A prompt file or folder, read and checked."""

    path: str
    kind: str  # one of KINDS
    items: tuple[PromptItem, ...]  # every prompt, in index order

    @property
    def digest(self) -> str:
        """sha256 over every prompt (text, item id, metadata): a resume compares it to tell another prompt set apart."""
        h = hashlib.sha256()
        for it in self.items:
            h.update(json.dumps([it.item_id, it.prompt, it.metadata], sort_keys=True).encode() + b"\n")
        return h.hexdigest()

    @property
    def tags(self) -> set[str]:
        return {it.metadata["tag"] for it in self.items if it.metadata is not None}


def natural_key(item_id: str) -> tuple:
    """DPG-Bench's item ids are numbers ("0" .. "1064"-ish) and COCO names ("COCOval2014000000010363"): numbers by
    value first, then the names in text order."""
    return (0, int(item_id), "") if item_id.isdigit() else (1, 0, item_id)


def read_source(path: str | Path) -> PromptSource:
    """Read a prompt file or folder; raise a UserError naming the file (and line) when it is not one of the formats."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--prompts {p}: no such file or folder")
    if p.is_dir():
        return _read_dpg_folder(p)
    if p.suffix == ".jsonl":
        return _read_geneval_jsonl(p)
    return _read_text(p)


def _read_geneval_jsonl(p: Path) -> PromptSource:
    from gvu.world.geneval_io import check_format, iter_jsonl

    items = []
    for line, m in iter_jsonl(p):
        check_format(m, f"{p}:{line}")  # GenEval's keys and types, whatever the vocabulary (COCO or nano)
        if not m["prompt"].strip():
            raise UserError(f"{p}:{line}: empty prompt")
        items.append(PromptItem(len(items), m["prompt"], str(len(items)), m))
    if not items:
        raise UserError(f"{p}: no prompts (the file is empty)")
    return PromptSource(str(p), "geneval_jsonl", tuple(items))


def _read_text(p: Path) -> PromptSource:
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--prompts {p}: not UTF-8 text; give a GenEval-format .jsonl, DPG-Bench's prompts folder, "
                        "or a text file with one prompt a line") from None
    except OSError as e:
        raise UserError(f"cannot read {p}: {e.strerror or e}") from None
    lines = [(n, ln.strip()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise UserError(f"--prompts {p}: no prompts (the file is empty)")
    n, first = lines[0]
    if first.startswith("{"):
        raise UserError(f"--prompts {p}:{n}: this looks like JSON lines, but the file is read as plain text (one "
                        "prompt a line) because its name does not end in .jsonl; rename it to .jsonl if it holds "
                        "GenEval metadata")
    items = tuple(PromptItem(i, ln, str(i)) for i, (_, ln) in enumerate(lines))
    return PromptSource(str(p), "text", items)


# the item id becomes the image file name <item_id>.png, and ELLA's compute_dpg_bench.py keys an image by the name
# before its first "." (basename.split(".")[0]): no dots, no path characters
_ITEM_ID = re.compile(r"[A-Za-z0-9_-]+")


def _read_dpg_folder(p: Path) -> PromptSource:
    files = sorted((f for f in p.iterdir() if f.is_file() and f.suffix == ".txt"), key=lambda f: natural_key(f.stem))
    if not files:
        raise UserError(f"--prompts {p} is a folder without <item_id>.txt prompt files; a folder must be DPG-Bench's "
                        "prompts folder (dpg_bench/prompts of TencentQQGYLab/ELLA), else give a .jsonl or text file")
    items = []
    for f in files:
        if not _ITEM_ID.fullmatch(f.stem):
            raise UserError(f"{f}: item id {f.stem!r} must be letters, digits, '_' or '-'")
        try:
            text = f.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise UserError(f"{f}: not UTF-8 text") from None
        if not text:
            raise UserError(f"{f}: empty prompt")
        items.append(PromptItem(len(items), text, f.stem))
    return PromptSource(str(p), "dpg_folder", tuple(items))
