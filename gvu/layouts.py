"""The benchmark folder layouts `gvu generate` writes, one prompt at a time and atomically.

  geneval    <index:05d>/metadata.jsonl (the prompt's GenEval line) and <index:05d>/samples/<k:04d>.png, K images
             (default 4). djghosh13/geneval's evaluate_images.py walks the folders whose names are digits and the
             images whose names match \\d+\\.png, so other entries in the root (generation.json, tmp folders) are
             skipped by it.
  genevalpp  <index>.png, one image a prompt, index without zero padding: matrix0721/GvU's
             evaluation/evaluation_geneval_plus.py opens image_dir / f"{idx}.png" for line idx (0-based) of
             Geneval++.jsonl. prompts.jsonl beside the images holds the prompts' lines in index order (the GenEval
             metadata for jsonl inputs, {"prompt": ...} for text), so line i describes i.png.
  dpg        <item_id>.png, one 2x2 grid of 4 images a prompt, tiles side by side without gaps: TencentQQGYLab/ELLA's
             dpg_bench/compute_dpg_bench.py crops (0,0,r,r), (r,0,2r,r), (0,r,r,2r), (r,r,2r,2r) for image side r
             (--resolution) and keys the image by its name. Image k sits in tile k (row-major). prompts.jsonl
             beside them holds {"item_id", "prompt"} in index order. (That script lists every file of the folder and
             skips, with a "Failed filename" line, those that are not images: prompts.jsonl and generation.json.)

Atomic: a prompt's files are written under a name starting with TMP_PREFIX, flushed to disk, then renamed into place,
so a crash leaves either nothing or the prompt's complete files; tmp leftovers are removed when the folder is next
opened. A PNG counts as written only if it ends in PNG's IEND chunk, so a truncated file (a copy cut short) is redone.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from gvu.atomic import fsync, fsync_folder, write_text
from gvu.errors import UserError
from gvu.prompt_sources import PromptItem, PromptSource

TMP_PREFIX = ".tmp-"
PROMPTS_FILE = "prompts.jsonl"
GENERATION_FILE = "generation.json"
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC; every complete PNG ends with it


@dataclass(frozen=True)
class LayoutSpec:
    name: str
    default_images: int  # K when --images-per-prompt is not given
    fixed_images: int | None  # the only K the layout can hold; None: any K >= 1
    needs_metadata: bool  # the layout stores GenEval metadata, so its input must be GenEval-format jsonl
    prompts_file: bool  # writes prompts.jsonl beside the images


SPECS = {
    "geneval": LayoutSpec("geneval", 4, None, True, False),
    "genevalpp": LayoutSpec("genevalpp", 1, 1, False, True),
    "dpg": LayoutSpec("dpg", 4, 4, False, True),
}
LAYOUTS = tuple(SPECS)
GENEVALPP_ONLY_TAGS = frozenset({"color_count_attr", "color_spatial_attr", "spatial_count_attr", "size_spatial_attr",
                                 "multi_object_count_attr"})  # GenEval++'s tags that GenEval does not have


def auto_layout(source: PromptSource) -> str:
    """DPG's folder -> dpg; a jsonl with a GenEval++-only tag -> genevalpp, else geneval; plain text -> genevalpp
    (one image a prompt, named by its line)."""
    if source.kind == "dpg_folder":
        return "dpg"
    if source.kind == "geneval_jsonl":
        return "genevalpp" if source.tags & GENEVALPP_ONLY_TAGS else "geneval"
    return "genevalpp"


def images_per_prompt(layout: str, source: PromptSource, requested: int | None) -> int:
    """Check that the layout can hold the input and K images a prompt; return K."""
    if layout not in SPECS:
        raise UserError(f"unknown layout {layout!r}; the layouts are {', '.join(LAYOUTS)} or auto")
    spec = SPECS[layout]
    if spec.needs_metadata and source.kind != "geneval_jsonl":
        raise UserError(f"the {layout} layout writes each prompt's GenEval metadata, but {source.path} is "
                        f"{'a DPG-Bench prompt folder' if source.kind == 'dpg_folder' else 'plain text'} without any; "
                        "give a GenEval-format .jsonl, or use --layout genevalpp (one image a prompt) or dpg "
                        "(a 2x2 grid a prompt)")
    k = spec.default_images if requested is None else requested
    if k < 1:
        raise UserError(f"--images-per-prompt must be at least 1 (got {k})")
    if spec.fixed_images is not None and k != spec.fixed_images:
        what = "one image a prompt, <index>.png" if layout == "genevalpp" else "one 2x2 grid of 4 images a prompt"
        raise UserError(f"the {layout} layout holds {what}: --images-per-prompt must be {spec.fixed_images} "
                        f"(got {k}); use --layout geneval for K images a prompt in folders")
    return k


# ---------------------------------------------------------------------------------------------- file names

def prompt_target(layout: str, root: Path, item: PromptItem) -> Path:
    """The folder (geneval) or file a prompt's images go to."""
    if layout == "geneval":
        return root / f"{item.index:05d}"
    return root / (f"{item.index}.png" if layout == "genevalpp" else f"{item.item_id}.png")


def png_complete(path: Path) -> bool:
    """A file that exists and ends in PNG's IEND chunk (a crash or a cut copy leaves it without)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < len(PNG_END):
                return False
            f.seek(-len(PNG_END), os.SEEK_END)
            return f.read() == PNG_END
    except OSError:
        return False


def is_complete(layout: str, root: Path, item: PromptItem, k: int) -> bool:
    """Whether the prompt's files are all there: for geneval its metadata line (the same prompt) and K whole PNGs."""
    target = prompt_target(layout, root, item)
    if layout != "geneval":
        return png_complete(target)
    try:
        meta = json.loads((target / "metadata.jsonl").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return meta == item.metadata and all(png_complete(target / "samples" / f"{j:04d}.png") for j in range(k))


# ---------------------------------------------------------------------------------------------- writing

def grid_2x2(images: np.ndarray) -> np.ndarray:
    """4 images [4, H, W, 3] -> one [2H, 2W, 3]: image k in tile k, row-major (ELLA's crop order)."""
    if images.shape[0] != 4:
        raise ValueError(f"a 2x2 grid needs 4 images, got {images.shape[0]}")
    top, bottom = np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)
    return np.concatenate([top, bottom], axis=0)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    with open(path, "wb") as f:
        Image.fromarray(pixels).save(f, format="PNG")
        f.flush()
        os.fsync(f.fileno())


def write_prompt(layout: str, root: Path, item: PromptItem, images: np.ndarray) -> Path:
    """Write one prompt's images (uint8 [K, H, W, 3]) in the layout, atomically; an incomplete earlier copy of the
    prompt is replaced. Returns the prompt's folder or file."""
    target = prompt_target(layout, root, item)
    tmp = root / f"{TMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}"
    if layout == "geneval":
        (tmp / "samples").mkdir(parents=True)
        with open(tmp / "metadata.jsonl", "w", encoding="utf-8") as f:
            f.write(json.dumps(item.metadata) + "\n")
        for j, px in enumerate(images):
            _write_png(tmp / "samples" / f"{j:04d}.png", px)
        fsync_folder(tmp / "samples")
        fsync_folder(tmp)
        if target.exists():  # an incomplete folder (the caller found it so): a directory cannot be renamed over
            shutil.rmtree(target)
    else:
        _write_png(tmp, images[0] if layout == "genevalpp" else grid_2x2(images))
    os.replace(tmp, target)
    fsync(str(root))
    return target


def prompts_file_text(layout: str, items: tuple[PromptItem, ...]) -> str:
    """prompts.jsonl of the genevalpp and dpg layouts: line i describes prompt i (see the module docstring)."""
    if layout == "dpg":
        rows = [{"item_id": it.item_id, "prompt": it.prompt} for it in items]
    else:
        rows = [it.metadata if it.metadata is not None else {"prompt": it.prompt} for it in items]
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_text_atomic(path: Path, text: str) -> None:
    """gvu.atomic.write_text under a TMP_PREFIX name, which remove_leftovers recognises after a crash."""
    write_text(path, text, tmp=path.parent / f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")


def remove_leftovers(root: Path) -> int:
    """Remove the tmp files and folders a crash left in root; returns how many."""
    n = 0
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            n += 1
    return n


def is_generated_entry(layout: str, p: Path) -> bool:
    """Whether an entry of an output folder is one that `gvu generate` writes in this layout (what --overwrite may
    replace): generation.json, prompts.jsonl, tmp leftovers, prompt folders or images."""
    if p.name in (GENERATION_FILE, PROMPTS_FILE) or p.name.startswith(TMP_PREFIX):
        return True
    if layout == "geneval":
        return p.is_dir() and p.name.isdigit()
    return p.is_file() and p.suffix == ".png"
