"""What the judged scorers share: reading a generated folder's prompts.jsonl, the per-image verdict cache, atomic
result files, and the progress bar over judge requests.

The verdict cache is a jsonl file, one whole line per judged image, appended and flushed as each verdict
arrives; a line cut short by a crash is dropped when read back (run_io.whole_records). A rerun reuses every
cached verdict made by the same judge, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os

from tqdm import tqdm

from gvu.atomic import write_text
from gvu.errors import UserError
from gvu.world.geneval_io import iter_jsonl
from gvu.run_io import whole_records

PROMPTS_FILE = "prompts.jsonl"


def read_prompts(folder: str) -> list[dict]:
    """The records of FOLDER/prompts.jsonl, in order; a UserError names a missing file or a bad line."""
    path = os.path.join(folder, PROMPTS_FILE)
    if not os.path.isdir(folder):
        raise UserError(f"{folder} is not a folder; give the folder `gvu generate` wrote")
    if not os.path.isfile(path):
        raise UserError(f"{folder} has no {PROMPTS_FILE}: it is not a GenEval++ or DPG folder from `gvu generate` "
                        "(a GenEval folder of <index>/samples/ is scored with --scorer geneval)")
    records = [record for _, record in iter_jsonl(path)]  # a bad line is an error naming file and line
    if not records:
        raise UserError(f"{path} is empty: nothing to score")
    return records


def read_generation_models(folder: str) -> list[str]:
    """The model paths a folder was generated from: generation.json's `model` / `base_model`, and, when that
    model is a `gvu train` run, the run config's base `model` (relative paths read from the current folder)."""
    path = os.path.join(folder, "generation.json")
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, json.JSONDecodeError):
        return []
    models = [info.get(k) for k in ("model", "base_model") if isinstance(info.get(k), str)]
    for model in list(models):
        config = os.path.join(model, "config.json")
        if os.path.isfile(config):
            try:
                with open(config) as f:
                    base = json.load(f).get("model")
            except (OSError, json.JSONDecodeError, AttributeError):
                base = None
            if isinstance(base, str):
                models.append(base)
    return models


class VerdictCache:
    """FILE.jsonl of per-image records keyed by `key`; only records made by `judge` are reused."""

    def __init__(self, path: str, key: str, judge: str, overwrite: bool = False, read_only: bool = False):
        """read_only: only look (a dry run): records of other judges are ignored and nothing is written."""
        self.path, self.key, self.judge = path, key, judge
        if overwrite and not read_only and os.path.exists(path):
            os.remove(path)
        self.records: dict[str, dict] = {}
        if os.path.exists(path) and not (overwrite and read_only):
            with open(path) as f:
                for _, record in whole_records(f):
                    if record.get("judge") != judge:
                        if read_only:
                            continue
                        raise UserError(f"{path} holds verdicts by another judge ({record.get('judge')}); "
                                        "pass --overwrite to replace them, or another --out")
                    self.records[str(record[key])] = record
            if not read_only:
                self.rewrite()  # drop a line a crash cut short, so that appends start on a fresh line

    def rewrite(self) -> None:
        write_text(self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records.values()))

    def get(self, key) -> dict | None:
        return self.records.get(str(key))

    def add(self, record: dict) -> None:
        record = {**record, "judge": self.judge}
        with open(self.path, "a") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
        self.records[str(record[self.key])] = record


def file_sha1(path: str) -> str:
    """The image file's hash: a cached verdict is reused only for the very file it judged."""
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()


def write_json_atomic(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n")


def progress(total: int, desc: str, judge) -> tqdm:
    """A bar on stderr over images; its postfix shows the judge's requests and failed tries."""
    bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)
    bar.set_postfix(requests=judge.stats.requests, failures=judge.stats.failures)
    return bar


def tick(bar: tqdm, judge, n: int = 1) -> None:
    bar.set_postfix(requests=judge.stats.requests, failures=judge.stats.failures, refresh=False)
    bar.update(n)
