"""GenEval++ judged by a vision-language model, following the official GvU protocol
(matrix0721/GvU, evaluation/evaluation_geneval_plus.py):

- each image is sent with the official strict system prompt (SYSTEM_PROMPT, word for word) and the user message
  "Instruction:\\n{prompt}\\n\\nExpectation checklist:\\n{checklist}", the checklist built from the metadata as the
  official `metadata_to_explanation` builds it; the image as a base64 JPEG; temperature 0, max_tokens 200;
- the reply's JSON object (`correct`, `reason`) is extracted as the official `extract_json_from_response` does;
  a reply without one is asked again, 6 tries in all, then recorded as correct = -1 (counted wrong);
- a missing image counts as wrong ("Image not found", no request), and so does an unreadable one;
- an image is correct when its `correct` equals 1 (Python equality, so JSON true counts, "1" does not);
  accuracy per tag; overall = the mean of the tag accuracies, each rounded to 4 decimals first, as the official
  script reports it.

Folder layout (from `gvu generate`): FOLDER/prompts.jsonl (one GenEval++ metadata line a prompt, in order) and
FOLDER/<index>.png, one image a prompt. Written to OUT: genevalpp_verdicts.jsonl (one line per image: verdict,
reason, raw reply, judge; the resume cache) and genevalpp_results.json / .md (atomic, only once all are judged).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass

from PIL import Image

from gvu.errors import UserError
from gvu.atomic import write_text
from gvu.eval.judge_io import VerdictCache, file_sha1, progress, read_prompts, tick, write_json_atomic
from gvu.eval.judges import Judge, JudgeRequest

# The official GenEval++ judge system prompt, reproduced exactly (it is a protocol constant): SYSTEM_PROMPT in
# matrix0721/GvU evaluation/evaluation_geneval_plus.py (commit 8bb5415).
SYSTEM_PROMPT = """You are an expert image evaluator.

Your task is to determine whether the given image faithfully satisfies the visual instruction and the expectation checklist.

Follow these rules strictly:
1. The image must match **all** expectations, including:
   - Object classes
   - Counts of each object
   - Colors of each object
   - Spatial position within the image (e.g., "above", "below", based on real pixel position)
   - Size and relative scale of objects
2. The image must appear as a **natural, coherent, photo-like single image**.
   - Do NOT allow stylized images (e.g., cartoons, sketches, anime).
   - Do NOT allow collage-style or multi-panel images. Only one consistent, realistic scene is acceptable.
3. Be very strict and conservative in your judgment. 

Return your result as a JSON object using this format:
{
  "correct": 1 if the image fully satisfies all expectations, else 0,
  "reason": "You may explain in detail what is missing or incorrect"
}
"""  # noqa: E501 (a protocol constant, long line and the space after "judgment." included)

USER_TEMPLATE = "Instruction:\n{prompt}\n\nExpectation checklist:\n{checklist}"
MAX_TOKENS = 200
TRIES = 6
TAGS = ("color_attr", "counting", "color_count_attr", "color_spatial_attr", "spatial_count_attr",
        "size_spatial_attr", "multi_object_count_attr")
VERDICTS_FILE, RESULTS_JSON, RESULTS_MD = "genevalpp_verdicts.jsonl", "genevalpp_results.json", "genevalpp_results.md"


def checklist(metadata: dict) -> str:
    """The expectation checklist, built as the official metadata_to_explanation builds it: one line per included
    object ("{color}-colored {size} {count} {class}s located in the {region} part of the image" with the parts
    that are present; "present in the image" without a region), then one per excluded class ("No more than
    {count - 1} {class}s should appear.", plural whenever the excluded count is above 1)."""
    lines = []
    for item in metadata.get("include", []):
        count = item.get("count", 1)
        noun = f"{count} {item['class'] + 's' if count > 1 else item['class']}"
        adjectives = [f"{item['color']}-colored"] if item.get("color") else []
        adjectives += [item["size"]] if item.get("size") else []
        if adjectives:
            noun = f"{' '.join(adjectives)} {noun}"
        where = f"located in the {item['region']} part of the image" if item.get("region") else "present in the image"
        lines.append(f"- {noun} {where}.")
    for item in metadata.get("exclude", []):
        count = item.get("count", 1)
        noun = item["class"] + "s" if count > 1 else item["class"]
        lines.append(f"- No more than {count - 1} {noun} should appear.")
    return "This image should contain:\n" + "\n".join(lines)


def user_message(metadata: dict) -> str:
    return USER_TEMPLATE.format(prompt=metadata.get("prompt", "").strip(), checklist=checklist(metadata))


def extract_json(text: str) -> dict:
    """The official extraction: strip, drop a leading ```json fence and a trailing ``` fence, take the widest
    {...} span and parse it. Raises ValueError (json.JSONDecodeError is one) when there is none."""
    text = re.sub(r"\s*```$", "", re.sub(r"^```json\s*", "", text.strip()))
    match = re.search(r"\{[\s\S]*\}", text)
    if not match:
        raise ValueError("No JSON object found")
    return json.loads(match.group(0))


def is_correct(result) -> bool:
    """The official count: result.get("correct", 0) == 1."""
    return isinstance(result, dict) and result.get("correct", 0) == 1


@dataclass
class TagScore:
    tag: str
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return round(self.correct / self.total, 4) if self.total else 0.0


def summarize(verdicts: list[dict]) -> dict:
    """Per-tag accuracy (rounded to 4 decimals, as the official script) and overall = their mean (rounded to 4);
    also the accuracy over all images, failures (correct = -1) and missing images."""
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for v in verdicts:
        counts[v["tag"]][0] += int(is_correct(v["result"]))
        counts[v["tag"]][1] += 1
    tags = [TagScore(t, *counts[t]) for t in sorted(counts, key=lambda t: (TAGS.index(t) if t in TAGS else 99, t))]
    overall = round(sum(t.accuracy for t in tags) / len(tags), 4) if tags else 0.0
    n = sum(t.total for t in tags)
    return {
        "overall": overall,
        "tag_accuracy": {t.tag: t.accuracy for t in tags},
        "tag_counts": {t.tag: {"correct": t.correct, "total": t.total} for t in tags},
        "overall_accuracy_all_images": round(sum(t.correct for t in tags) / n, 4) if n else 0.0,
        "images": n,
        "failed_after_tries": sum(1 for v in verdicts if v["result"].get("correct") == -1),
        "missing_images": sum(1 for v in verdicts if v.get("missing")),
    }


def markdown(summary: dict, judge_name: str, folder: str) -> str:
    rows = [f"GenEval++ of `{folder}`, judged by `{judge_name}`", "",
            "| tag | correct / total | accuracy |", "|---|---|---|"]
    for tag, acc in summary["tag_accuracy"].items():
        c = summary["tag_counts"][tag]
        rows.append(f"| {tag} | {c['correct']} / {c['total']} | {acc:.4f} |")
    rows.append(f"| **overall (mean of {len(summary['tag_accuracy'])} tags)** | | **{summary['overall']:.4f}** |")
    rows += ["", (f"{summary['images']} images; {summary['failed_after_tries']} without a JSON verdict after "
                  f"{TRIES} tries and {summary['missing_images']} missing or unreadable, all counted wrong.")]
    return "\n".join(rows) + "\n"


def check_folder(folder: str) -> list[dict]:
    """The metadata lines, after checking the folder is a GenEval++ one: GenEval++ metadata (tag, include,
    prompt; no DPG item_id) and at least one <index>.png."""
    prompts = read_prompts(folder)
    for n, m in enumerate(prompts, 1):
        if "item_id" in m:
            raise UserError(f"{folder} is a DPG-Bench folder (prompts.jsonl has item_id); score it with --scorer dpg")
        if not isinstance(m.get("include"), list) or "prompt" not in m or "tag" not in m:
            raise UserError(f"{folder}/prompts.jsonl:{n}: not GenEval++ metadata (needs tag, include, prompt); "
                            "generate the folder from Geneval++.jsonl")
    if not any(os.path.isfile(image_path(folder, i)) for i in range(len(prompts))):
        raise UserError(f"{folder} has none of the images 0.png .. {len(prompts) - 1}.png that prompts.jsonl "
                        "promises: not a GenEval++ folder from `gvu generate`")
    return prompts


def image_path(folder: str, index: int) -> str:
    return os.path.join(folder, f"{index}.png")


def missing_verdict(index: int, metadata: dict) -> dict:
    """The official record for an image that is not on disk: wrong, and never sent."""
    return {"index": index, "tag": metadata["tag"], "prompt": metadata["prompt"].strip(), "missing": True,
            "result": {"correct": 0, "reason": "Image not found"}, "tries": 0}


def pending_requests(folder: str, prompts: list[dict], cache: VerdictCache) -> tuple[list[int], dict[int, dict]]:
    """Indices still to judge (image on disk, and no cached verdict of this very image file) and the verdicts of
    missing images (kept out of the cache, so that an image generated later is judged)."""
    todo, missing = [], {}
    for i, m in enumerate(prompts):
        path = image_path(folder, i)
        if not os.path.isfile(path):
            missing[i] = missing_verdict(i, m)
            continue
        cached = cache.get(i)
        if cached is not None and cached.get("prompt") != m["prompt"].strip():
            raise UserError(f"{cache.path} holds a verdict for image {i} of another prompt "
                            f"({cached.get('prompt')!r}); pass --overwrite or another --out")
        if cached is None or cached.get("image_sha1") != file_sha1(path):  # new or regenerated image
            todo.append(i)
    return todo, missing


def make_request(folder: str, metadata: dict, index: int, max_tokens: int = MAX_TOKENS) -> JudgeRequest:
    with Image.open(image_path(folder, index)) as im:
        image = im.convert("RGB")
    return JudgeRequest(image=image, user=user_message(metadata), system=SYSTEM_PROMPT, max_tokens=max_tokens)


def score_folder(folder: str, out: str, judge: Judge, overwrite: bool = False, chunk: int = 64,
                 max_tokens: int = MAX_TOKENS) -> dict:
    """Judge every image not yet in the cache, then write the results; returns the summary. A JudgeError (judge
    unreachable after its retries) propagates with the verdicts so far cached and no results file written."""
    prompts = check_folder(folder)
    os.makedirs(out, exist_ok=True)
    cache = VerdictCache(os.path.join(out, VERDICTS_FILE), key="index", judge=judge.name, overwrite=overwrite)
    todo, missing = pending_requests(folder, prompts, cache)
    bar = progress(len(prompts), "GenEval++", judge)
    bar.update(len(prompts) - len(todo))
    try:
        for start in range(0, len(todo), chunk):
            indices, requests = [], []
            for i in todo[start:start + chunk]:
                try:
                    requests.append(make_request(folder, prompts[i], i, max_tokens))
                    indices.append(i)
                except OSError as e:  # an unreadable image fails, and a failed image counts wrong
                    missing[i] = {**missing_verdict(i, prompts[i]), "result": {"correct": 0,
                                                                                "reason": f"Image unreadable: {e}"}}
                    tick(bar, judge)
            tries = dict.fromkeys(range(len(indices)), 0)
            round_ids = list(range(len(indices)))
            while round_ids:  # protocol tries: a reply without a JSON object is asked again, up to TRIES times
                retry = []
                for k, reply in judge.stream([requests[j] for j in round_ids]):
                    j = round_ids[k]
                    tries[j] += 1
                    i = indices[j]
                    base = {"index": i, "tag": prompts[i]["tag"], "prompt": prompts[i]["prompt"].strip(),
                            "raw": reply.text, "tries": tries[j], "image_sha1": file_sha1(image_path(folder, i))}
                    try:
                        result = extract_json(reply.text)
                    except ValueError as e:
                        if tries[j] < TRIES:
                            retry.append(j)
                            continue
                        result = {"correct": -1, "reason": f"Image not successfully evaluated after {TRIES} tries: {e}"}
                    cache.add({**base, "result": result})
                    tick(bar, judge)
                round_ids = sorted(retry)
    finally:
        bar.close()
    verdicts = [missing.get(i) or cache.get(i) for i in range(len(prompts))]
    summary = {"judge": judge.name, "folder": os.path.abspath(folder), "protocol": "GvU evaluation_geneval_plus.py",
               "max_tokens": max_tokens, "tries": TRIES,
               **summarize(verdicts), "judge_usage_this_call": judge.stats.as_dict()}
    write_json_atomic(os.path.join(out, RESULTS_JSON), summary)
    write_text(os.path.join(out, RESULTS_MD), markdown(summary, judge.name, folder))
    return summary
