"""The `gvu world prompts / world render / eval` commands, end to end and on bad input.

Bad input must give `gvu: error: ...` with exit status 2, no traceback, and leave no output (nor temporary
files) behind.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from gvu.world import cli as world_cli

REPO = Path(__file__).resolve().parents[1]


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A small rendered folder: 14 genevalpp eval prompts x 2 images, made through the CLI."""
    from gvu.cli import main

    root = tmp_path_factory.mktemp("rendered")
    assert main(["world", "prompts", "--suite", "genevalpp", "--split", "eval", "-n", "14", "-o",
                 str(root / "p.jsonl")]) == 0
    assert main(["world", "render", str(root / "p.jsonl"), "-o", str(root / "img"), "--images-per-prompt", "2"]) == 0
    return root


def test_prompts_render_eval_end_to_end(rendered, gvu, tmp_path):
    prompts = [json.loads(line) for line in (rendered / "p.jsonl").read_text().splitlines()]
    assert len(prompts) == 14
    folders = sorted(p.name for p in (rendered / "img").iterdir())
    assert folders == [f"{i:05d}" for i in range(14)]
    out = tmp_path / "r" / "results.jsonl"
    rc, stdout, err = gvu("eval", rendered / "img", "--out", out)
    assert rc == 0, err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 28 and set(rows[0]) == {"index", "sample", "tag", "prompt", "correct", "reason"}
    assert all(r["correct"] for r in rows)  # clean renderings of their own prompts
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["overall"] == 1.0 and summary["images"] == 28 and len(summary["tags"]) == 7
    assert "| **overall** (mean of 7 tags) | 28 | 28 | **100.0%** |" in stdout


def test_eval_overall_is_the_unweighted_mean_over_tags():
    from gvu.world.scoring import summarise

    rows = [{"index": 0, "tag": "counting", "correct": c} for c in (True, False, False, False)]
    rows += [{"index": 1, "tag": "colors", "correct": True}]
    s = summarise(rows)
    assert s["tags"]["counting"]["accuracy"] == 0.25 and s["tags"]["colors"]["accuracy"] == 1.0
    assert s["overall"] == pytest.approx((0.25 + 1.0) / 2)  # not 2/5 over images


def test_render_is_deterministic_from_its_seed(rendered, gvu, tmp_path):
    rc, _, err = gvu("world", "render", rendered / "p.jsonl", "-o", tmp_path / "again", "--images-per-prompt", "2")
    assert rc == 0, err
    a = (rendered / "img" / "00003" / "samples" / "0001.png").read_bytes()
    assert (tmp_path / "again" / "00003" / "samples" / "0001.png").read_bytes() == a


def test_existing_outputs_are_refused_without_overwrite_and_replaced_with_it(rendered, gvu, tmp_path):
    out = tmp_path / "img"
    assert gvu("world", "render", rendered / "p.jsonl", "-o", out, "--images-per-prompt", "1")[0] == 0
    rc, _, err = gvu("world", "render", rendered / "p.jsonl", "-o", out, "--images-per-prompt", "1")
    assert rc == 2 and "already holds results; pass --overwrite" in err
    rc, _, err = gvu("world", "render", rendered / "p.jsonl", "-o", out, "--images-per-prompt", "2", "--overwrite")
    assert rc == 0, err
    assert (out / "00000" / "samples" / "0001.png").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["img"]  # no .tmp / .old folders left beside it
    assert gvu("eval", out)[0] == 0
    rc, _, err = gvu("eval", out)
    assert rc == 2 and "results.jsonl already exists; pass --overwrite" in err
    assert gvu("eval", out, "--overwrite")[0] == 0
    rc, _, err = gvu("world", "prompts", "-n", "3", "-o", rendered / "p.jsonl")
    assert rc == 2 and "already exists" in err


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"tag": "colors", "include": [{"class": "star", "count": 1, "color": "red"}], "prompt": "a photo of a red star"}


@pytest.mark.parametrize("bad,fragment", [
    ('{"tag": "colors", "include": [', "p.jsonl:3: malformed JSON"),
    ({**GOOD, "tag": "shininess"}, "p.jsonl:3: unknown tag 'shininess'"),
    ({**GOOD, "include": [{"class": "hexagon", "count": 1}]}, "p.jsonl:3: include[0]: unknown class 'hexagon'"),
    ({**GOOD, "include": [{"class": "star", "count": 1, "color": "teal"}]}, "unknown colour 'teal'"),
    ({**GOOD, "include": [{"class": "star", "count": 9}]}, "count 9 out of range 1..4"),
    ({**GOOD, "include": [{"class": "star", "count": 1}, {"class": "circle", "count": 1, "position": ["above", 5]}]},
     "p.jsonl:3: include[1]: position refers to object 5"),
    ({**GOOD, "include": [{"class": "dog", "count": 1}]}, "real-benchmark prompts"),
], ids=["malformed", "tag", "class", "colour", "count", "relation-index", "coco"])
def test_render_refuses_bad_prompts_before_writing_anything(tmp_path, gvu, bad, fragment):
    p = write_jsonl(tmp_path / "p.jsonl", [GOOD, GOOD, bad])
    rc, out, err = gvu("world", "render", p, "-o", tmp_path / "img")
    assert rc == 2 and err.startswith("gvu: error: ") and fragment in err, err
    assert "Traceback" not in err
    assert [x.name for x in tmp_path.iterdir()] == ["p.jsonl"]


@pytest.mark.parametrize("args,fragment", [
    (["--images-per-prompt", "0"], "--images-per-prompt must be at least 1"),
    (["--image-size", "16"], "--image-size must be at least 32"),
])
def test_render_refuses_bad_options(tmp_path, gvu, args, fragment):
    p = write_jsonl(tmp_path / "p.jsonl", [GOOD])
    rc, _, err = gvu("world", "render", p, "-o", tmp_path / "img", *args)
    assert rc == 2 and fragment in err


def test_a_failure_halfway_through_render_leaves_nothing_and_keeps_old_output(tmp_path, gvu, monkeypatch):
    p = write_jsonl(tmp_path / "p.jsonl", [GOOD] * 5)
    calls = {"n": 0}
    real_render = world_cli.render

    def flaky(scene):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt  # Ctrl-C in the middle of writing
        return real_render(scene)

    monkeypatch.setattr(world_cli, "render", flaky)
    rc, _, err = gvu("world", "render", p, "-o", tmp_path / "img")
    assert rc == 130 and "interrupted" in err
    assert [x.name for x in tmp_path.iterdir()] == ["p.jsonl"]
    monkeypatch.setattr(world_cli, "render", real_render)
    assert gvu("world", "render", p, "-o", tmp_path / "img", "--images-per-prompt", "1")[0] == 0
    before = files_under(tmp_path / "img")
    calls["n"] = 0
    monkeypatch.setattr(world_cli, "render", flaky)
    rc, _, _ = gvu("world", "render", p, "-o", tmp_path / "img", "--overwrite")
    assert rc == 130 and files_under(tmp_path / "img") == before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["img", "p.jsonl"]


def copy_folder(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_eval_refuses_a_wrong_size_image_naming_it_and_writes_nothing(rendered, gvu, tmp_path):
    folder = copy_folder(rendered / "img", tmp_path / "img")
    bad = folder / "00005" / "samples" / "0001.png"
    Image.new("RGB", (48, 48), (128, 128, 128)).save(bad)
    rc, _, err = gvu("eval", folder)
    assert rc == 2 and f"{bad}: image is 48x48, expected 64x64" in err
    assert not (folder / "results.jsonl").exists() and not (folder / "summary.json").exists()
    rc, _, err = gvu("eval", folder, "--image-size", "48")
    assert rc == 2 and "expected 48x48" in err


def test_eval_refuses_an_unreadable_image_and_a_coco_folder(rendered, gvu, tmp_path):
    folder = copy_folder(rendered / "img", tmp_path / "img")
    bad = folder / "00002" / "samples" / "0000.png"
    bad.write_bytes(b"not a png")
    rc, _, err = gvu("eval", folder)
    assert rc == 2 and f"{bad}: unreadable image" in err
    bad.unlink()
    meta = folder / "00001" / "metadata.jsonl"
    meta.write_text(json.dumps({"tag": "two_object", "prompt": "a photo of a bench and a cow",
                                "include": [{"class": "bench", "count": 1}, {"class": "cow", "count": 1}]}))
    rc, _, err = gvu("eval", folder)
    assert rc == 2 and "real-benchmark prompts" in err and "'bench'" in err
    assert not (folder / "results.jsonl").exists()


def test_the_console_command_exits_2_without_a_traceback(tmp_path):
    p = write_jsonl(tmp_path / "p.jsonl", ["{oops"])
    r = subprocess.run([sys.executable, "-m", "gvu", "world", "render", str(p), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and r.stderr.startswith("gvu: error: ") and "Traceback" not in r.stderr
    assert f"{p}:1: malformed JSON" in r.stderr


def test_eval_marks_images_of_another_prompt_incorrect(rendered, gvu, tmp_path):
    folder = copy_folder(rendered / "img", tmp_path / "img")
    a, b = folder / "00000" / "metadata.jsonl", folder / "00001" / "metadata.jsonl"
    ta, tb = a.read_text(), b.read_text()
    a.write_text(tb)
    b.write_text(ta)
    assert gvu("eval", folder)[0] == 0
    rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
    swapped = [r for r in rows if r["index"] in (0, 1)]
    assert swapped and all(not r["correct"] and r["reason"] for r in swapped)
    assert all(r["correct"] for r in rows if r["index"] not in (0, 1))
    assert json.loads((folder / "summary.json").read_text())["overall"] < 1.0
