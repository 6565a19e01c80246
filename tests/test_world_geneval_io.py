"""GenEval's files: parsing, the nano-world checks, the folder layout, and the real benchmark prompt files."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from PIL import Image

from gvu.errors import UserError
from gvu.world import geneval_io as gio
from gvu.world.scene import Obj, Scene, render

GOOD = {"tag": "position", "prompt": "a photo of a star left of a circle",
        "include": [{"class": "circle", "count": 1}, {"class": "star", "count": 1, "position": ["left of", 0]}]}
GOODPP = {"tag": "size_spatial_attr", "prompt": "A photo of a larger heart on the left and a smaller cross on the right",
          "include": [{"class": "heart", "count": 1, "size": "larger", "region": "left"},
                      {"class": "cross", "count": 1, "size": "smaller", "region": "right"}]}
COUNT = {"tag": "counting", "prompt": "a photo of four stars",
         "include": [{"class": "star", "count": 4}], "exclude": [{"class": "star", "count": 5}]}


def edited(base: dict, edit) -> dict:
    m = copy.deepcopy(base)
    edit(m)
    return m


BAD = [  # (metadata, a fragment the error must contain)
    (edited(GOOD, lambda m: m.update(tag="texture")), "unknown tag 'texture'"),
    (edited(GOOD, lambda m: m["include"][0].update({"class": "hexagon"})), "unknown class 'hexagon'"),
    (edited(GOOD, lambda m: m["include"][0].update(color="teal")), "unknown colour 'teal'"),
    (edited(GOOD, lambda m: m["include"][0].update(count=0)), "count 0 out of range 1..4"),
    (edited(GOOD, lambda m: m["include"][0].update(count=5)), "count 5 out of range 1..4"),
    (edited(COUNT, lambda m: m["exclude"][0].update(count=6)), "exclude[0]: count 6 out of range 1..5"),
    (edited(GOOD, lambda m: m["include"][1].update(position=["left of", 2])), "refers to object 2"),
    (edited(GOOD, lambda m: m["include"][1].update(position=["left of", 1])), "refers to object 1"),
    (edited(GOOD, lambda m: m["include"][1].update(position=["behind", 0])), "unknown relation 'behind'"),
    (edited(GOODPP, lambda m: m["include"][0].update(region="middle")), "unknown region 'middle'"),
    (edited(GOODPP, lambda m: m["include"][0].update(size="huge")), "unknown size 'huge'"),
    (edited(GOODPP, lambda m: m["include"][1].update(size="larger")), "both a 'larger' and a 'smaller'"),
    (edited(GOOD, lambda m: m.pop("prompt")), "'prompt'"),
    (edited(GOOD, lambda m: m.update(include=[])), "non-empty list"),
    (edited(GOOD, lambda m: m["include"][0].update(count="1")), "integer 'count'"),
    (edited(GOOD, lambda m: m["include"][1].update(position="left of")), "[relation, index]"),
    ({"tag": "counting", "prompt": "p", "include": [{"class": "star", "count": 4}, {"class": "circle", "count": 3}]},
     "7 objects do not fit"),
    (edited(GOOD, lambda m: m["include"][0].update({"class": "dog"})), "real-benchmark prompts"),
]


def test_good_prompts_pass():
    for m in (GOOD, GOODPP, COUNT):
        gio.validate_metadata(m, "f.jsonl", 1)


@pytest.mark.parametrize("meta,fragment", BAD, ids=[f for _, f in BAD])
def test_bad_prompts_fail_with_a_clear_message_naming_file_and_line(meta, fragment):
    with pytest.raises(UserError) as e:
        gio.validate_metadata(meta, "f.jsonl", 7)
    assert str(e.value).startswith("f.jsonl:7: ") and fragment in str(e.value)


def test_a_malformed_jsonl_line_is_reported_with_its_line_number(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(COUNT) + "\n{\"tag\": oops}\n")
    with pytest.raises(UserError, match=r"p\.jsonl:4: malformed JSON"):
        gio.read_prompts(p)
    p.write_text("[1, 2]\n")
    with pytest.raises(UserError, match=r"p\.jsonl:1: expected a JSON object"):
        gio.read_prompts(p)
    p.write_text("\n")
    with pytest.raises(UserError, match="no prompts"):
        gio.read_prompts(p)
    with pytest.raises(UserError, match="cannot read"):
        gio.read_prompts(tmp_path / "missing.jsonl")


def test_folder_round_trip(tmp_path):
    images = [render(Scene((Obj("star", "red", "large", 20.0, 30.0),))),
              render(Scene((Obj("circle", "blue", "small", 40.0, 40.0),)))]
    gio.write_prompt_folder(tmp_path, 0, GOOD, images)
    gio.write_prompt_folder(tmp_path, 12, COUNT, images[:1])
    (tmp_path / "results.jsonl").write_text("{}\n")  # other entries at the root are ignored
    assert (tmp_path / "00012" / "samples" / "0000.png").is_file()
    folders = gio.read_folder(tmp_path)
    assert [f.index for f in folders] == [0, 12]
    assert folders[0].metadata == GOOD and folders[1].metadata == COUNT
    assert [k for k, _ in folders[0].samples] == [0, 1]
    for (_, p), img in zip(folders[0].samples, images):
        assert np.array_equal(np.asarray(gio.load_image(p)), np.asarray(img))
    assert gio.check_images(folders) == 64


def test_folder_layout_errors_name_the_place(tmp_path):
    with pytest.raises(UserError, match="no prompt folders"):
        gio.read_folder(tmp_path)
    (tmp_path / "00000").mkdir()
    with pytest.raises(UserError, match="no metadata.jsonl"):
        gio.read_folder(tmp_path)
    (tmp_path / "00000" / "metadata.jsonl").write_text(json.dumps(GOOD))
    with pytest.raises(UserError, match="no images"):
        gio.read_folder(tmp_path)


def test_images_of_the_wrong_size_or_unreadable_are_refused_by_name(tmp_path):
    ok, small, wide, junk = (tmp_path / n for n in ("ok.png", "small.png", "wide.png", "junk.png"))
    Image.new("RGB", (64, 64)).save(ok)
    Image.new("RGB", (48, 48)).save(small)
    Image.new("RGB", (64, 48)).save(wide)
    junk.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert gio.check_image(ok) == 64
    with pytest.raises(UserError, match=r"small\.png: image is 48x48, expected 64x64"):
        gio.check_image(small, 64)
    with pytest.raises(UserError, match=r"wide\.png: image is 64x48; nano-world images are square"):
        gio.check_image(wide)
    with pytest.raises(UserError, match=r"junk\.png: unreadable image"):
        gio.check_image(junk)


def test_atomic_folder_leaves_nothing_on_failure_and_keeps_the_old_output(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with gio.atomic_folder(out, overwrite=False) as tmp:
            (tmp / "00000").mkdir()
            raise RuntimeError("halfway")
    assert list(tmp_path.iterdir()) == []
    with gio.atomic_folder(out, overwrite=False) as tmp:
        (tmp / "00000").mkdir()
    with pytest.raises(UserError, match="--overwrite"):
        with gio.atomic_folder(out, overwrite=False):
            pass
    with pytest.raises(RuntimeError):
        with gio.atomic_folder(out, overwrite=True) as tmp:
            raise RuntimeError("halfway")
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "00000").is_dir()


def test_overwrite_never_replaces_a_folder_that_is_not_geneval_output(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not GenEval output"):
        gio.refuse_existing_folder(tmp_path, overwrite=True)
    out = tmp_path / "out"
    (out / "00000").mkdir(parents=True)
    (out / "results.jsonl").write_text("")
    gio.refuse_existing_folder(out, overwrite=True)  # prompt folders and the evaluator's files: output
    (out / "prompts.jsonl").write_text("{}\n")  # a jsonl of the user's is not
    with pytest.raises(UserError, match="not GenEval output"):
        gio.refuse_existing_folder(out, overwrite=True)
    (out / "prompts.jsonl").unlink()
    with pytest.raises(UserError, match="holds this command's input"):  # --overwrite would delete the input
        gio.refuse_existing_folder(out, overwrite=True, inputs=(out / "00000" / "metadata.jsonl",))


def test_outputs_under_a_file_are_refused_before_any_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        gio.refuse_existing_file(tmp_path / "f" / "x.jsonl", overwrite=False)
    with pytest.raises(UserError, match="is a file, not a folder"):
        gio.refuse_existing_folder(tmp_path / "f" / "sub" / "out", overwrite=False)


# ---------------------------------------------------------------------------- the real benchmark files

REAL = {"geneval/evaluation_metadata.jsonl": 553, "genevalpp/Geneval++.jsonl": 280,
        "flow_grpo_geneval/test_metadata.jsonl": 2212, "flow_grpo_geneval/unseen_objects_test_metadata.jsonl": 1024}


@pytest.mark.parametrize("name,count", REAL.items(), ids=list(REAL))
def test_real_benchmark_files_parse_and_the_nano_world_says_plainly_why_it_cannot_use_them(
        benchmarks_dir, name, count):
    path = benchmarks_dir / name
    prompts = gio.read_prompts(path, nano=False)
    assert len(prompts) == count
    assert all(m["tag"] in gio.TAGS for m in prompts)
    with pytest.raises(UserError) as e:
        gio.read_prompts(path, nano=True)
    msg = str(e.value)
    assert f"{count} of {count} prompts" in msg
    assert "real-benchmark prompts" in msg and "COCO" in msg and "GenEval's object detector" in msg
    classes = sorted({r["class"] for m in prompts for r in m["include"]})
    assert all(repr(c) in msg for c in classes[:3])  # a few offending classes, named
