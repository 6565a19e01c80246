"""DPG-Bench scoring as ELLA's compute_dpg_bench.py does it, with a scripted judge on 127.0.0.1 and a small
dpg_bench.csv made here; every number below is worked out by hand."""

import argparse
import base64
import csv
import io
import json
import os

import pytest
from PIL import Image

from gvu.errors import UserError
from gvu.eval import dpg, judge_cli
from gvu.eval.fake_server import FakeChatServer, FakeReply, user_text

# the 4 crops of every grid are filled with these colours (top-left, top-right, bottom-left, bottom-right)
CROP_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]

# item, proposition id, dependency, tuple, question
ROWS = [
    ("z", 1, "0", "entity - whole (tree)", "Is there a tree?"),  # ELLA skips the first data row...
    ("z", 2, "1", "attribute - color (tree, green)", "Is the tree green?"),  # ...so this parent id is unknown
    ("a", 1, "0", "entity - whole (cat)", "Is there a cat?"),
    ("a", 2, "1", "attribute - color (cat, black)", "Is the cat black?"),
    ("a", 3, "0", "entity - whole (mat)", "Is there a mat?"),
    ("a", 4, "1,3", "relation - spatial (cat, mat, on)", "Is the cat on the mat?"),
    ("b", 1, "0", "entity - whole (bird)", "Is there a bird?"),
    ("b", 2, "1", "attribute - color (bird, red)", "Is the bird red?"),
    ("c", 1, "0", "entity - whole (sun)", "Is there a sun?"),  # c's image is missing: never asked
]

# answers on crops 0..3 (item a), per question
ANSWERS_A = {
    "Is there a cat?": ["yes", "no", "Yes.", "yes"],
    "Is the cat black?": ["yes", "yes", "no", "yes, it is black"],  # not exactly "yes": 0
    "Is there a mat?": ["yes", "yes", "no", "yes"],
    "Is the cat on the mat?": ["yes", "yes", "yes", "yes"],
}


def crop_index(payload) -> int:
    url = payload["messages"][-1]["content"][1]["image_url"]["url"]
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")
    pixel = image.getpixel((image.width // 2, image.height // 2))
    return min(range(4), key=lambda k: sum((a - b) ** 2 for a, b in zip(pixel, CROP_COLOURS[k])))


def responder(payload, seen):
    question = user_text(payload)
    assert question.endswith(" Answer yes or no.")
    question = question[:-len(" Answer yes or no.")]
    if question in ANSWERS_A:
        return FakeReply(ANSWERS_A[question][crop_index(payload)])
    return FakeReply({"Is there a bird?": "yes", "Is the bird red?": "no"}.get(question, "yes"))


def write_csv(path, rows=ROWS):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(dpg.CSV_COLUMNS)
        for item, qid, dep, tup, question in rows:
            w.writerow([item, "prompt", "kw", qid, dep, "broad", "detailed", tup, question])


def grid(side=16) -> Image.Image:
    image = Image.new("RGB", (2 * side, 2 * side))
    for k, (x, y) in enumerate([(0, 0), (side, 0), (0, side), (side, side)]):
        image.paste(Image.new("RGB", (side, side), CROP_COLOURS[k]), (x, y))
    return image


def make_folder(root, items=("z", "a", "b", "c"), present=("z", "a", "b")):
    folder = root / "dpg"
    folder.mkdir()
    with open(folder / "prompts.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps({"item_id": item, "prompt": f"prompt {item}"}) + "\n")
    for item in present:
        grid().save(folder / f"{item}.png")
    return folder


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--scorer", default="dpg")
    parser.add_argument("--out")
    parser.add_argument("--overwrite", action="store_true")
    judge_cli.add_judge_arguments(parser)
    return parser.parse_args(argv)


def test_parent_zeroing_is_in_place_in_csv_order_as_in_ella():
    raw = {1: 0.0, 2: 1.0, 3: 1.0}
    # 1 <- 2 <- 3 listed parents first: 2 is zeroed by 1, then 3 by the zeroed 2: 0 / 3
    assert dpg.crop_score(raw, {1: [0], 2: [1], 3: [2]}) == 0.0
    # the child listed before its parent sees the parent's raw answer: only 2 is zeroed: 1 / 3
    assert dpg.crop_score(raw, {3: [2], 2: [1], 1: [0]}) == pytest.approx(1 / 3)
    with pytest.raises(KeyError):
        dpg.crop_score({2: 1.0}, {2: [1]})


def test_only_an_exact_yes_scores():
    assert dpg.is_yes("yes") and dpg.is_yes(" Yes.") and dpg.is_yes("YES")
    assert not dpg.is_yes("yes, it is black") and not dpg.is_yes("no") and not dpg.is_yes("yeah")


def test_questions_follow_ellas_bookkeeping(tmp_path):
    rows = ROWS + [("a", 5, "0", "entity - whole (hat)", "Is there a hat?")]  # `a` again after `b`
    write_csv(tmp_path / "q.csv", rows)
    items = dpg.read_questions(str(tmp_path / "q.csv"))
    assert list(items["z"].question) == [2]  # the first data row is skipped
    assert items["a"].question == {5: "Is there a hat?"}  # a non-contiguous item keeps its last run only
    assert items["b"].parents == {1: [0], 2: [1]}


def test_crop_averaging_parent_zeroing_and_category_tables_worked_by_hand(tmp_path, monkeypatch):
    write_csv(tmp_path / "q.csv")
    folder = make_folder(tmp_path)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeChatServer(responder) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        args = parse([str(folder), "--judge", "openai:vqa", "--questions", str(tmp_path / "q.csv"),
                      "--backoff", "0.01"])
        summary = judge_cli.run(args)
        # z: 1 question x 4 crops; a: 4 x 4; b: 2 x 4; c has no image
        assert server.count == 4 + 16 + 8
        assert server.requests[0]["body"]["max_tokens"] == dpg.MAX_TOKENS
        # item a, crop by crop (cat, black, mat, on):
        #   red   yes yes yes yes            -> 1, 1, 1, 1 -> 4/4 = 1.00
        #   green no  yes yes yes            -> black and on lose their parent "cat": 0, 0, 1, 0 -> 0.25
        #   blue  Yes. no  no  yes           -> on loses its parent "mat": 1, 0, 0, 0 -> 0.25
        #   white yes "yes, it is black" yes yes -> 1, 0, 1, 1 -> 0.75
        # image a = (1 + 0.25 + 0.25 + 0.75) / 4 = 0.5625; image b = (1 + 0) / 2 on every crop = 0.5
        # z is dropped (its question's parent was the skipped first row); c is missing
        # DPG = (0.5625 + 0.5) / 2 x 100 = 53.125
        assert summary["dpg_score"] == pytest.approx(53.125)
        assert summary["images_scored"] == 2 and list(summary["dropped"]) == ["z"]
        assert summary["missing_images"] == ["c"]
        # categories pool the last crop's raw answers (white), before zeroing:
        #   entity - whole: cat 1, mat 1, bird 1 -> 100; attribute - color: black 0, red 0 -> 0;
        #   relation - spatial: on 1 -> 100
        assert summary["l2"] == {"attribute - color": 0.0, "entity - whole": 100.0, "relation - spatial": 100.0}
        assert summary["l1"] == {"attribute": 0.0, "entity": 100.0, "relation": 100.0}
        out = folder / "eval-dpg"
        with open(out / dpg.ANSWERS_FILE) as f:
            records = {r["item_id"]: r for r in map(json.loads, f)}
        assert records["a"]["crop_scores"] == [1.0, 0.25, 0.25, 0.75]
        assert records["a"]["answers"][3]["2"] == "yes, it is black"
        assert records["a"]["judge"] == f"openai:vqa@{server.base_url}"
        with open(out / dpg.RESULTS_MD) as f:
            assert "**DPG score: 53.12**" in f.read()

        judge_cli.run(args)
        assert server.count == 28  # resumed from the cached answers: nothing sent
        regenerated = grid()
        regenerated.putpixel((0, 0), (0, 0, 0))
        regenerated.save(folder / "b.png")
        judge_cli.run(args)
        assert server.count == 28 + 8  # only the regenerated grid is asked again (2 questions x 4 crops)


def test_bad_inputs_are_refused_before_any_request(tmp_path, monkeypatch):
    write_csv(tmp_path / "q.csv")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    gpp = tmp_path / "gpp"
    gpp.mkdir()
    (gpp / "prompts.jsonl").write_text(json.dumps({"tag": "counting", "include": [], "prompt": "x"}) + "\n")
    with pytest.raises(UserError, match="--scorer genevalpp"):
        judge_cli.run(parse([str(gpp), "--judge", "openai:m", "--questions", str(tmp_path / "q.csv")]))
    folder = make_folder(tmp_path)
    with pytest.raises(UserError, match="needs --questions"):
        judge_cli.run(parse([str(folder), "--judge", "openai:m"]))
    with pytest.raises(UserError, match="no such file"):
        judge_cli.run(parse([str(folder), "--judge", "openai:m", "--questions", str(tmp_path / "none.csv")]))
    Image.new("RGB", (30, 20)).save(folder / "a.png")
    for item in ("z", "b"):
        os.remove(folder / f"{item}.png")
    with pytest.raises(UserError, match="square 2x2 grid"):
        judge_cli.run(parse([str(folder), "--judge", "openai:m", "--questions", str(tmp_path / "q.csv")]))
    other = tmp_path / "other.csv"
    write_csv(other, ROWS[:2])
    with pytest.raises(UserError, match="no questions in the CSV"):
        judge_cli.run(parse([str(folder), "--judge", "openai:m", "--questions", str(other)]))
