"""Score a GenEval folder with GenEval's rules on transformers: results in GenEval's format, plus gvu's table.

Input: GenEval's layout, <index:05d>/metadata.jsonl and <index:05d>/samples/<k:04d>.png. Everything is checked
before a model loads: the layout, each prompt's classes, colours and relations, that every image reads and all
share one size, and that the detector directory is a COCO Mask2Former and the CLIP directory a CLIP.

Output folder (default FOLDER/geneval):
- results.jsonl: one line per image in the format of GenEval's evaluate_images.py, which its summary_scores.py
  reads: filename, tag, prompt, correct, reason, metadata (the prompt's JSON, as a string), details (JSON string:
  {class: [[x0, y0, x1, y1, score], ...]} of the kept detections); plus index and sample;
- summary.json and summary.md: accuracy per tag and overall = the mean of the tag accuracies (GenEval's
  "Overall score (avg. over tasks)"), and which detector made them;
- cache.jsonl: each image's result as soon as it is scored, keyed by the image's bytes and its prompt, so an
  interrupted run resumes where it stopped. The final files are written to temporary names, synced, and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from gvu.errors import UserError
from gvu.eval.geneval.rules import SCORE_THRESHOLD, check_metadata, judge
from gvu.world import geneval_io as gio
from gvu.world.scoring import format_table, summarise

CACHE_VERSION = 1


@dataclass(frozen=True)
class ImageJob:
    """One image to score."""

    index: int  # the prompt folder's number
    sample: int  # k of samples/<k:04d>.png
    path: Path
    metadata: dict
    key: str  # sha256 of the image bytes and the prompt's JSON: a cached result is reused only for the same pair


def read_geneval_folder(root: Path) -> tuple[list[ImageJob], tuple[int, int]]:
    """Every image of a GenEval folder, checked (layout, prompts, images of one size); the image size (W, H)."""
    folders = gio.read_folder(root, nano=False)
    for f in folders:
        try:
            check_metadata(f.metadata, str(f.path / "metadata.jsonl"), gio.COCO_CLASSES)
        except ValueError as e:
            raise UserError(str(e)) from None
    jobs, first = [], None
    for f in folders:
        meta_text = json.dumps(f.metadata, sort_keys=True)
        for k, p in f.samples:
            data = p.read_bytes()
            try:
                with Image.open(p) as im:
                    size = im.size
                    im.verify()
            except Exception as e:  # PIL raises many kinds (OSError, SyntaxError, struct.error ...)
                raise UserError(f"{p}: unreadable image ({e})") from None
            if first is None:
                first = (p, size)
            elif size != first[1]:
                raise UserError(f"{p}: image is {size[0]}x{size[1]}, but {first[0]} is {first[1][0]}x{first[1][1]}; "
                                f"a GenEval folder holds images of one size (one model's samples)")
            key = hashlib.sha256(data + b"\0" + meta_text.encode()).hexdigest()
            jobs.append(ImageJob(f.index, k, p, f.metadata, key))
    return jobs, first[1]


def result_row(job: ImageJob, verdict) -> dict:
    """GenEval's results.jsonl record for one image (evaluate_images.evaluate_image), plus index and sample."""
    details = {name: [[*map(float, d.box), float(d.score)] for d in dets] for name, dets in verdict.kept.items()}
    return {"filename": str(job.path), "tag": job.metadata["tag"], "prompt": job.metadata["prompt"],
            "correct": bool(verdict.correct), "reason": verdict.reason, "metadata": json.dumps(job.metadata),
            "details": json.dumps(details), "index": job.index, "sample": job.sample}


def _write_atomic(contents: dict[Path, str]) -> None:
    """Each file to a temporary name, synced to disk, then renamed over the old one."""
    from gvu.atomic import fsync

    tmps = {}
    try:
        for path, text in contents.items():
            tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
            tmps[path] = tmp
            tmp.write_text(text, encoding="utf-8")
            fsync(str(tmp))
        for path, tmp in tmps.items():
            os.replace(tmp, path)
        for folder in {p.parent for p in contents}:
            fsync(str(folder))
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


class ResultCache:
    """cache.jsonl: a header naming the models, then one {key, row} line per scored image, appended and synced
    after each batch. A line cut short by a crash is ignored on the next run."""

    def __init__(self, path: Path, header: dict, overwrite: bool):
        self.path, self.header, self.rows = path, header, {}
        if path.exists() and overwrite:
            path.unlink()
        if path.exists():
            lines = path.read_text(encoding="utf-8").splitlines()
            try:
                old = json.loads(lines[0]) if lines else None
            except json.JSONDecodeError:
                old = None
            if old != header:
                raise UserError(f"{path.parent} holds GenEval results made with other models or settings "
                                f"({_describe(old)}); pass --overwrite to replace them, or choose another --out")
            for line in lines[1:]:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
                self.rows[rec["key"]] = rec["row"]
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(header) + "\n", encoding="utf-8")

    def add(self, entries: list[tuple[str, dict]]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for key, row in entries:
                f.write(json.dumps({"key": key, "row": row}) + "\n")
                self.rows[key] = row
            f.flush()
            os.fsync(f.fileno())


def _describe(header: dict | None) -> str:
    if not isinstance(header, dict):
        return "an unreadable cache header"
    return f"detector {header.get('detector')}, CLIP {header.get('clip')}"


def load_detector(info, device: str):
    from gvu.eval.geneval.detector import Mask2FormerDetector

    return Mask2FormerDetector(info, device)


def load_colors(path: Path, device: str):
    from gvu.eval.geneval.colors import ClipColorClassifier

    return ClipColorClassifier(path, device)


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def score_folder(folder: Path, out: Path, detector: Path, clip: Path, device: str | None = None,
                 batch_size: int = 4, overwrite: bool = False, progress: bool = True) -> dict:
    """Score every image of `folder` into `out` (see the module docstring); returns the summary."""
    from gvu.eval.geneval.colors import check_clip_dir
    from gvu.eval.geneval.detector import inspect_detector_dir, load_image

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    folder, out = Path(folder), Path(out)
    info = inspect_detector_dir(detector, gio.COCO_CLASSES)
    clip = check_clip_dir(clip)
    jobs, _ = read_geneval_folder(folder)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    results_path, cache_path = out / "results.jsonl", out / "cache.jsonl"
    if results_path.exists() and not cache_path.exists() and not overwrite:
        raise UserError(f"{results_path} already exists; pass --overwrite to replace it")
    header = {"gvu_geneval_cache": CACHE_VERSION, "detector": str(info.path.resolve()), "clip": str(clip.resolve())}
    cache = ResultCache(cache_path, header, overwrite)
    todo = [j for j in jobs if j.key not in cache.rows]
    if todo:
        device = device or default_device()
        det_model, color_model = load_detector(info, device), load_colors(clip, device)
        bar = tqdm(total=len(todo), desc="geneval", unit="img", disable=None if progress else True)
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            images = [load_image(j.path) for j in batch]
            detections = det_model.detect(images, min_score=SCORE_THRESHOLD)
            entries = []
            for job, image, dets in zip(batch, images, detections):
                def classify(name, objects, image=image):
                    return color_model.classify(image, name, objects)

                entries.append((job.key, result_row(job, judge(job.metadata, dets, classify))))
            cache.add(entries)
            bar.update(len(batch))
        bar.close()
    # the same image bytes and prompt may sit at another path (a copied folder): name each row by its own path
    rows = [{**cache.rows[j.key], "filename": str(j.path), "index": j.index, "sample": j.sample} for j in jobs]
    summary = {"scorer": "geneval", "detector": info.source, "official_detector": info.official,
               "detector_dir": str(info.path), "clip_dir": str(clip), **summarise(rows)}
    table = format_table(summary)
    md = f"GenEval on {folder}\n\ndetector: {info.source}\nCLIP: {clip}\n\n{table}\n"
    _write_atomic({results_path: gio.jsonl_text(rows), out / "summary.json": json.dumps(summary, indent=2) + "\n",
                   out / "summary.md": md})
    return summary
