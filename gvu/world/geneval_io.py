"""GenEval's files: prompt metadata (jsonl) and the folder layout of generated images, read and written safely.

Folder layout (as GenEval's generation scripts write it and its evaluate_images.py reads it):
    <root>/<index:05d>/metadata.jsonl        one JSON line, the prompt's metadata
    <root>/<index:05d>/samples/<k:04d>.png   the prompt's images

Parsing (GenEval's format) is kept apart from validation (the nano world's vocabulary): the real GenEval,
GenEval++ and Flow-GRPO prompt files parse without error, and only the nano-world check rejects them, saying
that their COCO classes need GenEval's detector and a real model. Every error is a UserError naming the file
(and line), and every writer leaves either the old output or the complete new one, never a half-written one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image

from gvu.atomic import replace_folder
from gvu.errors import UserError
from gvu.world.vocab import (COLORS, GENEVAL_TAGS, GENEVALPP_TAGS, MAX_COUNT, MAX_OBJECTS, REGIONS,
                             RELATIONS, RELATIVE_SIZES, SHAPES)

TAGS: tuple[str, ...] = tuple(dict.fromkeys(GENEVAL_TAGS + GENEVALPP_TAGS))  # both suites, in suite order
MIN_IMAGE_SIZE = 32  # below this the shapes blur into each other (measured: 24 px already fails prompts)

# GenEval's 80 COCO classes in the order of its object_names.txt (the detector's label order); the nano world
# knows them to say why it cannot use them, and gvu.eval.geneval to judge them.
COCO_CLASS_NAMES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse", "tv remote",
    "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock",
    "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)
COCO_CLASSES: frozenset[str] = frozenset(COCO_CLASS_NAMES)

_PROMPT_DIR = re.compile(r"\d{5}")
_SAMPLE = re.compile(r"\d+")


@dataclass(frozen=True)
class PromptFolder:
    """One prompt's folder in GenEval's layout."""

    index: int  # the folder's number, <index:05d>
    path: Path  # <root>/<index:05d>
    metadata: dict  # the prompt's GenEval metadata
    samples: tuple[tuple[int, Path], ...]  # (k, samples/<k:04d>.png), sorted by k


# ---------------------------------------------------------------------------------------------- parsing


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a malformed line is an error naming file and line."""
    path = Path(path)
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        line_no = 0
        try:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{line_no}: malformed JSON line ({e.msg}, column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path}:{line_no}: expected a JSON object, got {type(obj).__name__}")
                yield line_no, obj
        except UnicodeDecodeError:
            raise UserError(f"{path}:{line_no + 1}: not UTF-8 text") from None


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def check_format(m: dict, where: str) -> None:
    """GenEval's metadata format (keys and types), whatever the vocabulary. `where` is "file:line"."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"{where}: {what} (GenEval metadata: tag, include [{{class, count, color?, "
                            f"position?: [relation, index], region?, size?}}], exclude?, prompt)")

    need(isinstance(m.get("tag"), str), "missing or non-string 'tag'")
    need(isinstance(m.get("prompt"), str), "missing or non-string 'prompt'")
    inc = m.get("include")
    need(isinstance(inc, list) and len(inc) > 0, "'include' must be a non-empty list")
    need(isinstance(m.get("exclude", []), list), "'exclude' must be a list")
    for key in ("include", "exclude"):
        for i, r in enumerate(m.get(key, [])):
            need(isinstance(r, dict), f"{key}[{i}] must be an object")
            need(isinstance(r.get("class"), str), f"{key}[{i}] has no string 'class'")
            need(_is_int(r.get("count")), f"{key}[{i}] has no integer 'count'")
    for i, r in enumerate(inc):
        for opt in ("color", "region", "size"):
            need(opt not in r or isinstance(r[opt], str), f"include[{i}].{opt} must be a string")
        pos = r.get("position")
        need(pos is None or (isinstance(pos, list) and len(pos) == 2 and isinstance(pos[0], str) and _is_int(pos[1])),
             f"include[{i}].position must be [relation, index]")


# ------------------------------------------------------------------------------------ nano-world checks


def _classes(m: dict) -> list[str]:
    return [r["class"] for key in ("include", "exclude") for r in m.get(key, [])]


def _real_benchmark_message(classes: Iterable[str]) -> str:
    few = sorted(set(classes))
    shown = ", ".join(repr(c) for c in few[:5]) + (", ..." if len(few) > 5 else "")
    return (f"COCO classes ({shown}): these are real-benchmark prompts (GenEval / GenEval++ format), and the nano "
            f"world can neither render nor judge COCO objects; judging them needs GenEval's object detector (gvu eval "
            f"--scorer geneval, docs/geneval.md) and images from a real model. The nano world's classes are its "
            f"shapes: {', '.join(SHAPES)}")


def validate_metadata(m: dict, path: str | Path, line: int) -> None:
    """Is `m` a prompt the nano world can render and judge? Raises a UserError naming path:line if not."""
    where = f"{path}:{line}"
    check_format(m, where)

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"{where}: {what}")

    need(m["tag"] in TAGS, f"unknown tag {m['tag']!r}; the tags are GenEval's ({', '.join(GENEVAL_TAGS)}) "
                           f"and GenEval++'s ({', '.join(GENEVALPP_TAGS)})")
    coco = [c for c in _classes(m) if c in COCO_CLASSES and c not in SHAPES]
    need(not coco, _real_benchmark_message(coco))
    inc = m["include"]
    for i, r in enumerate(inc):
        need(r["class"] in SHAPES, f"include[{i}]: unknown class {r['class']!r}; the classes are {', '.join(SHAPES)}")
        need(1 <= r["count"] <= MAX_COUNT, f"include[{i}]: count {r['count']} out of range 1..{MAX_COUNT}")
        if "color" in r:
            need(r["color"] in COLORS, f"include[{i}]: unknown colour {r['color']!r}; the colours are {', '.join(COLORS)}")
        if "position" in r:
            rel, j = r["position"]
            need(rel in RELATIONS, f"include[{i}]: unknown relation {rel!r}; the relations are {', '.join(RELATIONS)}")
            need(0 <= j < len(inc) and j != i,
                 f"include[{i}]: position refers to object {j}, which must be another include index (0..{len(inc) - 1})")
        if "region" in r:
            need(r["region"] in REGIONS, f"include[{i}]: unknown region {r['region']!r}; the regions are {', '.join(REGIONS)}")
        if "size" in r:
            need(r["size"] in RELATIVE_SIZES,
                 f"include[{i}]: unknown size {r['size']!r}; the relative sizes are {', '.join(RELATIVE_SIZES)}")
    sizes = {r["size"] for r in inc if "size" in r}
    need(not sizes or sizes == set(RELATIVE_SIZES), "a size prompt needs both a 'larger' and a 'smaller' object")
    for i, r in enumerate(m.get("exclude", [])):
        need(r["class"] in SHAPES, f"exclude[{i}]: unknown class {r['class']!r}; the classes are {', '.join(SHAPES)}")
        # exclude {class, count k+1} is how GenEval says "exactly k", so k+1 may reach MAX_COUNT + 1
        need(1 <= r["count"] <= MAX_COUNT + 1, f"exclude[{i}]: count {r['count']} out of range 1..{MAX_COUNT + 1}")
    total = sum(r["count"] for r in inc)
    need(total <= MAX_OBJECTS, f"{total} objects do not fit in one nano-world image (at most {MAX_OBJECTS})")


def _validate_all(records: list[tuple[Path, int, dict]], what: str) -> None:
    """Nano-world checks over many prompts; real-benchmark files get one plain message, not a first-line error."""
    coco = [(p, line, c) for p, line, m in records for c in _classes(m) if c in COCO_CLASSES and c not in SHAPES]
    if coco:
        n = len({(p, line) for p, line, _ in coco})
        p, line, _ = coco[0]
        first = f"line {line}" if str(p) == what else f"{p}:{line}"
        raise UserError(f"{what}: {n} of {len(records)} prompts (the first at {first}) name "
                        + _real_benchmark_message(c for _, _, c in coco))
    for p, line, m in records:
        validate_metadata(m, p, line)


def read_prompts(path: str | Path, nano: bool = True) -> list[dict]:
    """The prompts of a GenEval metadata jsonl; with nano=True, also checked against the nano world."""
    path = Path(path)
    records = [(path, line, m) for line, m in iter_jsonl(path)]
    if not records:
        raise UserError(f"{path}: no prompts (the file is empty)")
    for p, line, m in records:
        check_format(m, f"{p}:{line}")
    if nano:
        _validate_all(records, str(path))
    return [m for _, _, m in records]


# --------------------------------------------------------------------------------------- folder layout


def prompt_dir(root: str | Path, index: int) -> Path:
    return Path(root) / f"{index:05d}"


def write_prompt_folder(root: str | Path, index: int, metadata: dict, images: list[Image.Image]) -> Path:
    """Write one prompt's folder: metadata.jsonl and samples/<k:04d>.png."""
    d = prompt_dir(root, index)
    (d / "samples").mkdir(parents=True, exist_ok=True)
    (d / "metadata.jsonl").write_text(json.dumps(metadata) + "\n", encoding="utf-8")
    for k, img in enumerate(images):
        img.save(d / "samples" / f"{k:04d}.png")
    return d


def read_folder(root: str | Path, nano: bool = True) -> list[PromptFolder]:
    """Every prompt folder under `root`, by index; other entries (results.jsonl, summary.json) are ignored."""
    root = Path(root)
    layout = "GenEval's layout: <index:05d>/metadata.jsonl and <index:05d>/samples/<k:04d>.png"
    if not root.is_dir():
        raise UserError(f"{root} is not a folder (expected {layout})")
    dirs = sorted(root / n for n in _list_folder(root) if (root / n).is_dir() and _PROMPT_DIR.fullmatch(n))
    if not dirs:
        raise UserError(f"{root} holds no prompt folders (expected {layout})")
    out, records = [], []
    for d in dirs:
        meta = d / "metadata.jsonl"
        if not meta.is_file():
            raise UserError(f"{d}: no metadata.jsonl (expected {layout})")
        lines = list(iter_jsonl(meta))
        if len(lines) != 1:
            raise UserError(f"{meta}: expected one JSON line, found {len(lines)}")
        line, m = lines[0]
        check_format(m, f"{meta}:{line}")
        records.append((meta, line, m))
        samples = d / "samples"
        pngs = sorted(samples / n for n in _list_folder(samples) if n.endswith(".png")) if samples.is_dir() else []
        if not pngs:
            raise UserError(f"{d}: no images in samples/ (expected {layout})")
        bad = [p.name for p in pngs if not _SAMPLE.fullmatch(p.stem)]
        if bad:
            raise UserError(f"{d / 'samples'}: image names must be numbers like 0000.png, found {bad[0]!r}")
        out.append(PromptFolder(int(d.name), d, m, tuple(sorted((int(p.stem), p) for p in pngs))))
    if nano:
        _validate_all(records, str(root))
    return out


def _list_folder(folder: Path) -> list[str]:
    """The names in a folder; an unreadable one is an error that says so (not a folder that seems empty)."""
    try:
        return os.listdir(folder)
    except OSError as e:
        raise UserError(f"cannot read the folder {folder}: {e.strerror or e} (check its permissions)") from None


# ------------------------------------------------------------------------------------------------ images


def check_image(path: str | Path, size: int | None = None) -> int:
    """The side of a readable, square image of `size` pixels (any size >= MIN_IMAGE_SIZE when None)."""
    try:
        with Image.open(path) as im:
            w, h = im.size
            im.verify()  # reads the whole file: a truncated or corrupt PNG fails here, before any scoring
    except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, struct.error ...)
        raise UserError(f"{path}: unreadable image ({e})") from None
    if w != h:
        raise UserError(f"{path}: image is {w}x{h}; nano-world images are square")
    if size is not None and w != size:
        raise UserError(f"{path}: image is {w}x{h}, expected {size}x{size} like the folder's other images")
    if w < MIN_IMAGE_SIZE:
        raise UserError(f"{path}: image is {w}x{h}; the nano world needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    return w


def check_images(folders: list[PromptFolder], size: int | None = None) -> int:
    """Check every image (readable, square, one size for all); returns that size."""
    for f in folders:
        for _, p in f.samples:
            size = check_image(p, size)
    assert size is not None  # read_folder guarantees at least one image
    return size


def load_image(path: str | Path) -> Image.Image:
    """An image as 8-bit RGB. 16-bit greyscale PNGs (Pillow's modes I;16* and I) are scaled down to 8 bits: Pillow's
    own convert("RGB") clips their values at 255, which turns almost every pixel white."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I;16") or im.mode == "I":
                import numpy as np

                arr = np.asarray(im, dtype=np.float64)
                if im.mode.startswith("I;16") or arr.max(initial=0) > 255:
                    arr = arr / 257.0  # 65535 -> 255
                return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
            return im.convert("RGB")
    except Exception as e:
        raise UserError(f"{path}: unreadable image ({e})") from None


# ------------------------------------------------------------------------------------- safe outputs


def _looks_like_output(folder: Path) -> bool:
    """Only GenEval output (prompt folders, the evaluator's results.jsonl and summary.json) may be replaced by
    --overwrite; any other file in it (a prompts file, notes) is the user's."""
    return all((p.is_dir() and _PROMPT_DIR.fullmatch(p.name)) or (p.is_file() and p.name in ("results.jsonl", "summary.json"))
               for p in folder.iterdir())


def _check_writable_parent(out: Path) -> None:
    """The nearest existing folder above `out` must be a folder this process can write into."""
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot write {out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"cannot write {out}: no permission to write in {parent}")


def refuse_existing_folder(out: Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output folder that holds results (without --overwrite), anything else, or one of the command's
    own inputs (--overwrite would delete it)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    _check_writable_parent(out)
    for src in inputs:
        if out.is_dir() and Path(os.path.realpath(src)).is_relative_to(os.path.realpath(out)):
            raise UserError(f"{out} holds this command's input {src}; choose another output folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"{out} already holds results; pass --overwrite to replace them")
        if not _looks_like_output(out):
            raise UserError(f"{out} holds files that are not GenEval output; refusing to replace it even with "
                            f"--overwrite (remove it yourself or choose another folder)")


def refuse_existing_file(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise UserError(f"{out} is a folder; expected a file path")
    _check_writable_parent(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")


@contextmanager
def atomic_folder(out: str | Path, overwrite: bool, inputs: tuple[Path, ...] = ()) -> Iterator[Path]:
    """Yield a fresh folder beside `out` to write into; on success it takes `out`'s place by a rename, on any
    failure (an error, Ctrl-C) it is removed. So `out` is always either as it was or complete."""
    out = Path(out)
    refuse_existing_folder(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, out)


def write_files_atomic(contents: dict[Path, str]) -> None:
    """Write several text files: all to temporary names first, then each renamed into place."""
    tmps = {}
    try:
        for path, text in contents.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
            tmps[path] = tmp
            tmp.write_text(text, encoding="utf-8")
        for path, tmp in tmps.items():
            os.replace(tmp, path)
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)
