"""Outputs never overlap inputs; unreadable folders say so; 16-bit PNGs are read as what they show."""

import os

import numpy as np
import pytest
from PIL import Image

from gvu.errors import UserError
from gvu.paths import check_output, check_writable, refuse_overlap
from gvu.world import geneval_io as gio


def test_an_output_that_is_inside_or_holds_an_input_is_refused(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("")
    with pytest.raises(UserError, match="is this command's input"):
        refuse_overlap(prompts, [model, prompts])
    with pytest.raises(UserError, match="lies inside this command's input"):
        refuse_overlap(model / "run", [model])
    with pytest.raises(UserError, match="lies inside this command's input"):
        refuse_overlap(model / "config.json", [model])
    with pytest.raises(UserError, match="holds this command's input"):
        refuse_overlap(tmp_path, [model])
    refuse_overlap(tmp_path, [model], allow_input_inside=True)  # a resumed run may hold its own inputs
    refuse_overlap(tmp_path / "run", [model, prompts, None])  # beside the inputs: fine
    (tmp_path / "link").symlink_to(model)
    with pytest.raises(UserError, match="lies inside"):  # a link into an input counts as the input
        refuse_overlap(tmp_path / "link" / "run", [model])


def test_an_output_under_a_file_or_of_the_wrong_kind_is_refused_before_work(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_writable(tmp_path / "f" / "run")
    with pytest.raises(UserError, match="is a file: give a folder"):
        check_writable(tmp_path / "f", folder=True)
    with pytest.raises(UserError, match="is a folder: give a file path"):
        check_writable(tmp_path)
    check_output(tmp_path / "new" / "deeper" / "run", [], folder=True)  # parents that do not exist yet: fine


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot be tested")
def test_an_unwritable_output_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(UserError, match="no permission"):
        check_writable(locked / "run", folder=True)


def test_an_unreadable_samples_folder_is_an_error_not_no_images(tmp_path, monkeypatch):
    d = gio.write_prompt_folder(tmp_path, 0, {"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                                              "prompt": "a photo of a circle"}, [Image.new("RGB", (32, 32))])
    real = os.listdir

    def denied(path):
        if str(path) == str(d / "samples"):
            raise PermissionError(13, "Permission denied")
        return real(path)

    monkeypatch.setattr(gio.os, "listdir", denied)
    with pytest.raises(UserError, match="cannot read the folder .*samples: Permission denied"):
        gio.read_folder(tmp_path)


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_white(tmp_path):
    # a grey ramp in 16 bits: 0, 257 * 100 and 65535 must read back as 0, 100 and 255 (clipping would give 0, 255, 255)
    arr = np.array([[0, 257 * 100, 65535]] * 3, dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")  # Pillow reads it as a 16-bit (or 32-bit integer) image
    got = np.asarray(gio.load_image(path))
    assert got.shape == (3, 3, 3) and got[0, :, 0].tolist() == [0, 100, 255]
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 1] == got[..., 2]).all()  # grey stays grey
