"""Score a GenEval folder with the exact evaluator, and summarise as GenEval does.

GenEval's summary (its summary_scores.py): accuracy per tag over all images of that tag, and the overall
score as the unweighted mean of the tag accuracies, so a tag with fewer prompts weighs as much as any other.
"""

from __future__ import annotations

from tqdm import tqdm

from gvu.world.evaluator import evaluate_image
from gvu.world.geneval_io import TAGS, PromptFolder, load_image
from gvu.world.vocab import GENEVAL_TAGS, GENEVALPP_TAGS


def score_folders(folders: list[PromptFolder], progress: bool = True) -> list[dict]:
    """One result row per image: index, sample, tag, prompt, correct, reason (empty when correct)."""
    jobs = [(f, k, p) for f in folders for k, p in f.samples]
    rows = []
    for f, k, p in tqdm(jobs, desc="eval", unit="img", disable=None if progress else True):
        j = evaluate_image(f.metadata, load_image(p))
        rows.append({"index": f.index, "sample": k, "tag": f.metadata["tag"], "prompt": f.metadata["prompt"],
                     "correct": j.correct, "reason": j.reason})
    return rows


def summarise(rows: list[dict]) -> dict:
    """{"tags": {tag: {images, correct, accuracy}}, "overall": mean over tags, "images", "prompts"}."""
    tags: dict[str, dict] = {}
    for r in rows:
        t = tags.setdefault(r["tag"], {"images": 0, "correct": 0})
        t["images"] += 1
        t["correct"] += bool(r["correct"])
    # list the tags in their suite's order (GenEval's or GenEval++'s) when they fit one suite, else as they come
    suite = next((ts for ts in (GENEVAL_TAGS, GENEVALPP_TAGS, TAGS) if set(tags) <= set(ts)), tuple(tags))
    order = {t: i for i, t in enumerate(suite)}
    tags = dict(sorted(tags.items(), key=lambda kv: order.get(kv[0], len(order))))
    for t in tags.values():
        t["accuracy"] = t["correct"] / t["images"]
    overall = sum(t["accuracy"] for t in tags.values()) / len(tags) if tags else 0.0
    return {"overall": overall, "tags": tags, "images": len(rows), "prompts": len({r["index"] for r in rows})}


def format_table(summary: dict) -> str:
    """The summary as a markdown table: one row per tag, then the overall score."""
    lines = ["| tag | images | correct | accuracy |", "|---|---:|---:|---:|"]
    for tag, t in summary["tags"].items():
        lines.append(f"| {tag} | {t['images']} | {t['correct']} | {100 * t['accuracy']:.1f}% |")
    lines.append(f"| **overall** (mean of {len(summary['tags'])} tags) | {summary['images']} | "
                 f"{sum(t['correct'] for t in summary['tags'].values())} | **{100 * summary['overall']:.1f}%** |")
    return "\n".join(lines)
