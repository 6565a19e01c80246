"""DPG-Bench judged by a VQA model, following ELLA's dpg_bench/compute_dpg_bench.py (TencentQQGYLab/ELLA):

- each prompt's image is a 2x2 grid of 2R x 2R pixels, cut into 4 crops of R x R (top-left, top-right,
  bottom-left, bottom-right: ELLA's crop order, its dist_eval.sh default of 4 pictures);
- every question of the prompt is asked on each crop; an answer scores 1 only if it is exactly "yes";
- on each crop, in the CSV's question order, a question scores 0 when any parent (the `dependency` column; 0 means
  none) currently scores 0. The zeroing is in place, so a parent zeroed earlier in the order zeroes its children,
  while a child listed before its parent sees the parent's raw answer (ELLA's loop, kept);
- crop score = mean over its questions; image score = mean over crops; DPG score = mean over images x 100.

ELLA's bookkeeping, reproduced as it is (docs/judges.md lists where it is odd):
- the CSV's first data row is skipped (`if i == 0: continue`), so the first item loses its proposition 1;
- an item's rows must be contiguous: when an item id reappears after another item, its earlier rows are dropped;
- a question whose parent id is not among the item's questions raises in ELLA, which drops that image from the
  score (it is reported here as `dropped`, and left out of the mean in the same way);
- category scores pool, over all images, each question's raw answer (1/0) on the last crop only, before the
  parent zeroing; the category is the `tuple` column up to its "(" (L2), and L1 is that up to its first "-".

The official VQA model is mPLUG-large through modelscope; here any chat judge answers "{question} Answer yes or
no.", and its reply is lower-cased and stripped of surrounding spaces and a final period before the exact
comparison with "yes" (a chat model writes "Yes."; mPLUG writes "yes").

Folder layout (from `gvu generate`): FOLDER/prompts.jsonl (lines with item_id and prompt) and
FOLDER/<item_id>.png, one 2x2 grid a prompt. Written to OUT: dpg_answers.jsonl (per image: every answer on every
crop, the crop and image scores, the judge; the resume cache) and dpg_results.json / .md (atomic, at the end).
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from gvu.errors import UserError
from gvu.atomic import write_text
from gvu.eval.judge_io import VerdictCache, file_sha1, progress, read_prompts, tick, write_json_atomic
from gvu.eval.judges import Judge, JudgeRequest

CSV_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad", "category_detailed",
               "tuple", "question_natural_language")
QUESTION_SUFFIX = " Answer yes or no."
MAX_TOKENS = 10
CROPS = 4
ANSWERS_FILE, RESULTS_JSON, RESULTS_MD = "dpg_answers.jsonl", "dpg_results.json", "dpg_results.md"


@dataclass
class ItemQuestions:
    """One prompt's questions, in CSV order, keyed by proposition id (Q questions)."""
    question: dict[int, str] = field(default_factory=dict)
    parents: dict[int, list[int]] = field(default_factory=dict)
    tuple: dict[int, str] = field(default_factory=dict)


def read_questions(path: str) -> dict[str, ItemQuestions]:
    """dpg_bench.csv -> {item_id: its questions}, with ELLA's prepare_dpg_data bookkeeping (first data row
    skipped; a non-contiguous item keeps only its last run of rows)."""
    if not path or not os.path.isfile(path):
        raise UserError(f"--questions {path}: no such file; DPG-Bench needs dpg_bench.csv from the ELLA repository "
                        "(TencentQQGYLab/ELLA, dpg_bench/dpg_bench.csv)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("item_id", "proposition_id", "dependency", "tuple", "question_natural_language")
                   if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {', '.join(missing)}; expected DPG-Bench's columns "
                            f"{', '.join(CSV_COLUMNS)}")
        items: dict[str, ItemQuestions] = {}
        previous = None
        for row_index, row in enumerate(reader):
            if row_index == 0:  # ELLA: `if i == 0: continue` over the data rows
                continue
            item = row["item_id"]
            try:
                qid = int(float(row["proposition_id"]))
                parents = [int(d.strip()) for d in row["dependency"].split(",")]
            except ValueError:
                raise UserError(f"{path}: row {row_index + 2}: proposition_id and dependency must be integers "
                                f"(got {row['proposition_id']!r}, {row['dependency']!r})") from None
            if item != previous:
                items[item] = ItemQuestions()  # ELLA starts the item afresh whenever the id changes
            q = items[item]
            q.question[qid], q.parents[qid], q.tuple[qid] = row["question_natural_language"], parents, row["tuple"]
            previous = item
    return items


def is_yes(answer: str) -> bool:
    """ELLA scores `answer == 'yes'`; a chat judge's reply is first lower-cased and stripped of surrounding spaces
    and a final period (mPLUG's own answers are already bare lower-case words)."""
    return answer.strip().lower().rstrip(".").strip() == "yes"


def crop_score(raw: dict[int, float], parents: dict[int, list[int]]) -> float:
    """One crop: zero each question (in CSV order, in place) whose parent scores 0, then average. Raises KeyError
    on a parent id that is not a question of the item (ELLA then drops the image)."""
    scores = dict(raw)
    for qid, parent_ids in parents.items():
        if any(p != 0 and scores[p] == 0 for p in parent_ids):
            scores[qid] = 0.0
    return sum(scores.values()) / len(scores)


def score_image(answers: list[dict[int, str]], q: ItemQuestions) -> tuple[list[float], float, dict[int, float]]:
    """answers: one {qid: answer} per crop -> (crop scores [CROPS], image score, last crop's raw scores)."""
    crop_scores, raw = [], {}
    for crop_answers in answers:
        raw = {qid: float(is_yes(crop_answers[qid])) for qid in q.question}
        crop_scores.append(crop_score(raw, q.parents))
    return crop_scores, sum(crop_scores) / len(crop_scores), raw


def category_tables(records: list[dict], items: dict[str, ItemQuestions]) -> tuple[dict, dict]:
    """ELLA's L1 and L2 category scores (x 100): per category, the mean of every question's raw last-crop score."""
    l2: dict[str, list[float]] = defaultdict(list)
    for record in records:
        q = items[record["item_id"]]
        for qid, score in record["last_crop_raw"].items():
            l2[q.tuple[int(qid)].split("(")[0].strip()].append(score)
    l1: dict[str, list[float]] = defaultdict(list)
    for category in sorted(l2):
        l1[category.split("-")[0].strip()].extend(l2[category])
    return ({k: float(np.mean(v)) * 100 for k, v in sorted(l1.items())},
            {k: float(np.mean(v)) * 100 for k, v in sorted(l2.items())})


def crops(grid: Image.Image) -> list[Image.Image]:
    """A 2R x 2R grid -> its 4 R x R crops, in ELLA's order (top-left, top-right, bottom-left, bottom-right)."""
    r = grid.width // 2
    return [grid.crop(box) for box in ((0, 0, r, r), (r, 0, 2 * r, r), (0, r, r, 2 * r), (r, r, 2 * r, 2 * r))]


def check_folder(folder: str, items: dict[str, ItemQuestions]) -> list[str]:
    """The folder's item ids, after checking it is a DPG folder whose items all have questions."""
    prompts = read_prompts(folder)
    ids = []
    for n, p in enumerate(prompts, 1):
        if "item_id" not in p:
            raise UserError(f"{folder}/prompts.jsonl:{n}: no item_id: not a DPG-Bench folder (a GenEval++ folder is "
                            "scored with --scorer genevalpp)")
        ids.append(str(p["item_id"]))
    unknown = [i for i in ids if i not in items]
    if unknown:
        raise UserError(f"{len(unknown)} item(s) of {folder} have no questions in the CSV (first: {unknown[0]}); "
                        "is --questions DPG-Bench's dpg_bench.csv?")
    present = [i for i in ids if os.path.isfile(os.path.join(folder, f"{i}.png"))]
    if not present:
        raise UserError(f"{folder} has none of the images <item_id>.png that prompts.jsonl promises")
    for i in present:  # PIL reads only the header here: cheap for the whole folder
        try:
            with Image.open(os.path.join(folder, f"{i}.png")) as im:
                width, height = im.size
        except OSError as e:
            raise UserError(f"{folder}/{i}.png cannot be read ({e}); regenerate it or remove it") from None
        if width != height or width % 2:
            raise UserError(f"{folder}/{i}.png is {width}x{height}: DPG-Bench expects a square 2x2 grid "
                            "of even side (generate 4 images a prompt)")
    return ids


def requests_for(folder: str, item: str, q: ItemQuestions, max_tokens: int) -> list[JudgeRequest]:
    """CROPS x Q requests: crop-major, questions in CSV order."""
    with Image.open(os.path.join(folder, f"{item}.png")) as im:
        grid = im.convert("RGB")
    return [JudgeRequest(image=c, user=q.question[qid] + QUESTION_SUFFIX, max_tokens=max_tokens)
            for c in crops(grid) for qid in q.question]


def record_for(item: str, q: ItemQuestions, texts: list[str]) -> dict:
    qids = list(q.question)
    answers = [dict(zip(qids, texts[c * len(qids):(c + 1) * len(qids)])) for c in range(CROPS)]
    record = {"item_id": item, "answers": [{str(k): v for k, v in a.items()} for a in answers]}
    try:
        crop_scores, score, raw = score_image(answers, q)
    except KeyError as e:
        return {**record, "dropped": f"a dependency names question {e.args[0]}, which the item does not have "
                                     "(ELLA raises here and leaves the image out)"}
    return {**record, "crop_scores": crop_scores, "score": score, "last_crop_raw": {str(k): v for k, v in raw.items()}}


def summarize(records: list[dict], items: dict[str, ItemQuestions], missing: list[str]) -> dict:
    scored = [r for r in records if "score" in r]
    l1, l2 = category_tables(scored, items)
    return {"dpg_score": float(np.mean([r["score"] for r in scored])) * 100 if scored else 0.0,
            "images_scored": len(scored), "l1": l1, "l2": l2,
            "dropped": {r["item_id"]: r["dropped"] for r in records if "dropped" in r}, "missing_images": missing}


def markdown(summary: dict, judge_name: str, folder: str) -> str:
    rows = [f"DPG-Bench of `{folder}`, judged by `{judge_name}`", "",
            (f"**DPG score: {summary['dpg_score']:.2f}** over {summary['images_scored']} images "
             f"({len(summary['missing_images'])} missing, {len(summary['dropped'])} dropped as ELLA drops them)"), "",
            "| L1 category | score |", "|---|---|"]
    rows += [f"| {k} | {v:.2f} |" for k, v in summary["l1"].items()]
    rows += ["", "| L2 category | score |", "|---|---|"] + [f"| {k} | {v:.2f} |" for k, v in summary["l2"].items()]
    return "\n".join(rows) + "\n"


def cached_for_file(cache: VerdictCache, folder: str, item: str) -> bool:
    """A cached record of this very image file (a regenerated grid is judged again)."""
    record = cache.get(item)
    return record is not None and record.get("image_sha1") == file_sha1(os.path.join(folder, f"{item}.png"))


def score_folder(folder: str, out: str, judge: Judge, questions_csv: str, overwrite: bool = False, chunk: int = 8,
                 max_tokens: int = MAX_TOKENS) -> dict:
    """Ask every question on every crop of every image not yet cached, then write the results. Images missing
    from the folder are left out of the mean, as ELLA (which lists the folder) leaves them out; they are counted."""
    items = read_questions(questions_csv)
    ids = check_folder(folder, items)
    os.makedirs(out, exist_ok=True)
    cache = VerdictCache(os.path.join(out, ANSWERS_FILE), key="item_id", judge=judge.name, overwrite=overwrite)
    missing = [i for i in ids if not os.path.isfile(os.path.join(folder, f"{i}.png"))]
    todo = [i for i in ids if i not in missing and not cached_for_file(cache, folder, i)]
    bar = progress(len(ids) - len(missing), "DPG-Bench", judge)
    bar.update(len(ids) - len(missing) - len(todo))
    try:
        for start in range(0, len(todo), chunk):
            batch = todo[start:start + chunk]
            requests, owner = [], []  # owner[k] = (position in batch, slot among the item's CROPS x Q requests)
            for b, item in enumerate(batch):
                item_requests = requests_for(folder, item, items[item], max_tokens)
                owner += [(b, s) for s in range(len(item_requests))]
                requests += item_requests
            texts: list[list[str | None]] = [[None] * (CROPS * len(items[i].question)) for i in batch]
            left = [len(t) for t in texts]
            for k, reply in judge.stream(requests):
                b, s = owner[k]
                texts[b][s] = reply.text
                left[b] -= 1
                if left[b] == 0:
                    record = record_for(batch[b], items[batch[b]], texts[b])
                    cache.add({**record, "image_sha1": file_sha1(os.path.join(folder, f"{batch[b]}.png"))})
                    tick(bar, judge)
    finally:
        bar.close()
    records = [cache.get(i) for i in ids if i not in missing]
    summary = {"judge": judge.name, "folder": os.path.abspath(folder), "protocol": "ELLA compute_dpg_bench.py",
               "questions": os.path.abspath(questions_csv), "max_tokens": max_tokens,
               **summarize(records, items, missing),
               "judge_usage_this_call": judge.stats.as_dict()}
    write_json_atomic(os.path.join(out, RESULTS_JSON), summary)
    write_text(os.path.join(out, RESULTS_MD), markdown(summary, judge.name, folder))
    return summary
