"""`gvu pretrain`'s guards: bad input refused before any folder or work, a user's model never replaced, one writer
per run folder, crash leftovers (cut log lines) tolerated, and stage 1 resumed exactly between two code restarts."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

import gvu.models.pretrain as pt
from gvu.config import ConfigError
from gvu.errors import UserError
from gvu.models.pretrain import RunFolder, pretrain, resolve
from gvu.models.vq_train import foreground_weight
from gvu.world.vocab import BACKGROUND

SHIPPED = Path(__file__).resolve().parents[1] / "models" / "nano-janus"


@pytest.mark.parametrize("field,value,words", [
    ("spec", "nanoo", "spec='nanoo': not a model size"),
    ("save_every", 0, "save_every=0: must be at least 1"),
    ("vq_restart_every", 0, "vq_restart_every=0: must be at least 1"),
    ("vq_batch", 0, "vq_batch=0: must be at least 1"),
    ("lm_steps", -5, "lm_steps=-5: must be at least 0"),
    ("threads", 0, "threads=0: must be at least 1"),
    ("lm_lr", 0.0, "lm_lr=0.0: a learning rate must be above 0"),
    ("prompt_dropout", 1.5, "prompt_dropout=1.5: must be between 0.0 and 1.0"),
    ("und_extra", float("nan"), "und_extra=nan"),
    ("dec_small", -0.1, "dec_small=-0.1: must be between 0.0 and 1.0"),
    ("device", "gpu", "device='gpu': give cpu or cuda"),
    ("from_model", "models/nano-janu", "is not a saved nano-Janus directory"),
])
def test_a_bad_recipe_is_refused_before_any_folder_is_made(tmp_path, field, value, words):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        pretrain("smoke", str(out), **{field: value})
    assert not out.exists()


def test_the_cli_refuses_bad_input_with_a_message_and_no_folder(tmp_path):
    out = tmp_path / "run"
    for args, words in ((["--threads", "0"], "threads=0: must be at least 1"),
                        (["--set", "spec=nanoo"], "not a model size"),
                        (["--from-model", str(tmp_path / "nowhere")], "not a saved nano-Janus directory")):
        r = subprocess.run([sys.executable, "-m", "gvu.cli", "pretrain", "--preset", "smoke", "--out", str(out), *args],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "gvu: error:" in r.stderr and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert not out.exists()


def test_a_users_model_in_the_run_folder_is_never_replaced(tmp_path):
    work = tmp_path / "w"
    shutil.copytree(SHIPPED, work / "model")  # e.g. the shipped model copied there to train further
    before = sorted(os.listdir(work / "model"))
    with pytest.raises(ValueError, match="lies in --out .* model folder"):
        pretrain("nano", str(work), from_model=str(work / "model"))
    with pytest.raises(ValueError, match="holds a model/ folder but no pretraining run"):
        pretrain("nano", str(work), from_model=str(SHIPPED))
    assert sorted(os.listdir(work / "model")) == before and not (work / "pretrain_config.json").exists()


def test_a_saved_model_or_a_folder_of_other_files_is_not_taken_for_a_run(tmp_path):
    model = tmp_path / "model_copy"
    shutil.copytree(SHIPPED, model)  # it holds its recipe's pretrain_config.json: it must not look like a resume
    before = sorted(os.listdir(model))
    with pytest.raises(ValueError, match="is a saved model .*model.safetensors"):
        RunFolder(resolve("nano"), str(model))
    assert sorted(os.listdir(model)) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="is not empty and is not a pretraining run .*notes.txt"):
        RunFolder(resolve("smoke"), str(other))
    assert os.listdir(other) == ["notes.txt"]
    seeded = tmp_path / "seeded"  # stage checkpoints placed there beforehand are still taken up
    seeded.mkdir()
    (seeded / "stage1.pt").write_bytes(b"")
    RunFolder(resolve("smoke"), str(seeded)).close()


def test_one_writer_at_a_time_per_run_folder(tmp_path):
    cfg = resolve("smoke", threads=1)
    first = RunFolder(cfg, str(tmp_path / "run"))
    try:
        with pytest.raises(UserError, match="another `gvu pretrain` is writing into"):
            RunFolder(cfg, str(tmp_path / "run"))
    finally:
        first.close()
    RunFolder(cfg, str(tmp_path / "run")).close()  # free again once the first has ended
    assert json.loads((tmp_path / "run" / "pretrain_config.json").read_text())["lm_steps"] == cfg.lm_steps


def test_where_and_how_a_run_runs_is_not_its_recipe(tmp_path):
    RunFolder(resolve("smoke", threads=1), str(tmp_path / "run")).close()
    # another thread count, checkpoint interval or number of data workers resumes the same run
    RunFolder(resolve("smoke", threads=2, save_every=7, data_workers=2), str(tmp_path / "run")).close()
    with pytest.raises(ValueError, match="different config"):
        RunFolder(resolve("smoke", threads=1, vq_steps=31), str(tmp_path / "run"))


def test_log_lines_cut_short_by_a_crash_are_dropped_on_resume(tmp_path):
    from gvu.run_io import truncate_jsonl

    lines = [json.dumps({"stage": 1, "step": s}) + "\n" for s in (20, 40, 60)]
    (tmp_path / "log.jsonl").write_text("".join(lines) + '{"stage": 1, "st')
    pt.trim_log(str(tmp_path), 1, 40)
    assert (tmp_path / "log.jsonl").read_text() == "".join(lines[:2])
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"ste')
    assert truncate_jsonl(str(tmp_path / "metrics.jsonl"), 5) == 2
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_foreground_weight_reads_the_world_background_not_the_corner():
    bg = torch.tensor(BACKGROUND, dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
    img = bg.repeat(1, 4, 4)
    img[:, :2, :2] = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)  # an object over the top-left corner: 4 of 16 pixels
    w = foreground_weight(img[None], fg_weight=10.0)[0, 0]
    # weights 10 on the 4 object pixels and 1 on the 12 others, divided by their mean (40 + 12) / 16 = 3.25
    assert torch.allclose(w[:2, :2], torch.full((2, 2), 10 / 3.25))
    assert torch.allclose(w[2:, :], torch.full((2, 4), 1 / 3.25)) and torch.allclose(w[:2, 2:], torch.full((2, 2), 1 / 3.25))


def test_stage1_resumed_between_two_code_restarts_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    # restarts every 4 steps, saves every 3: a crash after the step-3 save resumes inside a restart window, whose
    # code-use counts (steps 1-3) must come back from the checkpoint, or codes used only then count as dead at step 4
    cfg = replace(pt.PRESETS["smoke"], vq_steps=8, vq_restart_every=4, save_every=3, threads=1)
    straight = tmp_path / "straight"
    os.makedirs(straight)
    _, _, config = pt.stage0(cfg, str(straight))
    want = pt.stage1(cfg, str(straight), config)

    crashed = tmp_path / "crashed"
    os.makedirs(crashed)
    pt.stage0(cfg, str(crashed))
    from gvu.models.pretrain import image_stages

    real, saves = image_stages.atomic_save, []

    def crash_on_second_save(obj, path):
        if saves:
            raise KeyboardInterrupt("stopped after step 6, before its save")
        saves.append(obj["step"])
        real(obj, path)

    monkeypatch.setattr(image_stages, "atomic_save", crash_on_second_save)
    with pytest.raises(KeyboardInterrupt):
        pt.stage1(cfg, str(crashed), config)
    monkeypatch.setattr(image_stages, "atomic_save", real)
    assert saves == [3]
    got = pt.stage1(cfg, str(crashed), config)
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want), [k for k in want if not torch.equal(got[k], want[k])]
    logs = [json.loads(x) for x in open(straight / "log.jsonl")], [json.loads(x) for x in open(crashed / "log.jsonl")]
    restarted = [[r.get("vq/restarted") for r in log if "vq/restarted" in r] for log in logs]
    assert restarted[0] == restarted[1]


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_default_recipe_is_the_shipped_models_and_the_nano_preset_changes_nothing():
    """PretrainConfig's defaults are the shipped model's recipe: models/nano-janus/pretrain_config.json is what
    `gvu pretrain --preset nano --vq-from models/nano-janus --set dec_steps=0` runs (its stages 1 and 1c came from an
    earlier run's model), field for field."""
    preset = json.loads((CONFIGS / "pretrain-nano.json").read_text())
    assert [k for k in preset if not k.startswith("_")] == []
    assert resolve("nano") == pt.PretrainConfig()
    cfg = resolve("nano", vq_from="models/nano-janus", dec_steps=0)
    with open(SHIPPED / "pretrain_config.json") as f:
        shipped = json.load(f)
    recipe = json.loads(json.dumps(asdict(cfg)))  # tuples as JSON writes them
    assert {k: v for k, v in recipe.items() if shipped.get(k, v) != v} == {}
    assert {"und_batch", "rank_images", "lm_steps", "s3_steps", "balanced_relations"} <= shipped.keys()


def test_every_archived_recipe_names_all_its_fields_and_is_valid():
    """An archived recipe does not lean on PretrainConfig's defaults, which follow the shipped model: each file names
    every field but the runtime ones, so it means the same recipe whatever the defaults become."""
    from dataclasses import fields

    runtime = {"device", "threads", "data_workers", "from_model", "vq_from"}
    names = {f.name for f in fields(pt.PretrainConfig)}
    files = sorted((CONFIGS / "archive").glob("pretrain-*.json"))
    assert len(files) >= 10
    for path in files:
        recipe = json.loads(path.read_text())
        assert {k for k in recipe if not k.startswith("_")} == names - runtime, path.name
        name = path.stem[len("pretrain-"):]
        given = {k: v for k, v in recipe.items() if not k.startswith("_")}
        loaded = resolve(name)  # validated
        assert {k: v for k, v in asdict(loaded).items() if k in given} == given, name
    # the shipped recipe under the name the model card's candidate runs used
    assert resolve("nano-u24r12") == resolve("nano")


def test_a_recipe_file_is_read_like_a_preset_and_bad_ones_are_clear_errors(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"lm_steps": 7, "_about": "a note"}))
    assert pt.resolve_files("smoke", str(f), ["vq_steps=3"]) == resolve("smoke", lm_steps=7, vq_steps=3)
    assert pt.resolve_files(None, str(CONFIGS / "archive" / "pretrain-nano-v7.json"), []) == resolve("nano-v7")
    for text, words in (('{"lm_steps": "many"}', "lm_steps: expected int"), ("[1]", "not a list"),
                        ('{"lm_stepz": 1}', "unknown setting 'lm_stepz'"), ('{"lm_steps": 1,', "not valid JSON")):
        f.write_text(text)
        with pytest.raises(ValueError, match=words):
            pt.resolve_files(None, str(f), [])
    with pytest.raises(ValueError, match="unknown preset 'nanoo'.*nano, smoke"):
        pt.resolve_files("nanoo", None, [])


class _Planted:
    """A pickle payload: unpickling it calls exec, which writes a marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_a_stage_file_holding_a_pickled_object_is_refused_and_its_code_never_runs(tmp_path):
    # the payload is live: unpickling it the way pretraining once read stage files runs it
    live = tmp_path / "live"
    torch.save({"step": 1, "model": _Planted(str(live))}, tmp_path / "probe.pt")
    torch.load(tmp_path / "probe.pt", weights_only=False)
    assert live.read_text() == "ran"
    # planted as a run's stage-1 checkpoint, it is refused when the run resumes, and never runs
    run = tmp_path / "run"
    cfg = resolve("smoke", threads=1, vq_steps=2)
    RunFolder(cfg, str(run)).close()
    _, _, config = pt.stage0(cfg, str(run))
    marker = tmp_path / "marker"
    torch.save({"step": 1, "model": _Planted(str(marker)), "opt": {}}, run / "stage1.pt")
    with pytest.raises(UserError, match="stage1.pt holds more than tensors and plain data"):
        pt.stage1(cfg, str(run), config)
    assert not marker.exists()
    # through the command: exit 2, one line, no traceback, nothing ran
    r = subprocess.run([sys.executable, "-m", "gvu.cli", "pretrain", "--preset", "smoke", "--set", "vq_steps=2",
                        "--threads", "1", "--out", str(run)], capture_output=True, text=True)
    assert r.returncode == 2 and "stage1.pt holds more than tensors" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()


def test_every_stage_file_loads_without_unpickling_and_resumes_exactly(tmp_path):
    """The stage files a run writes hold only tensors and plain data (torch.load(weights_only=True) reads each), and
    a run resumed from them after stage 2's first save ends with the weights of an uninterrupted one."""
    cfg = resolve("smoke", threads=1, vq_steps=2, dec_steps=1, vis_steps=2, lm_steps=4, s3_steps=2, save_every=2)
    straight = pt.pretrain(cfg, str(tmp_path / "straight"))
    names = sorted(n for n in os.listdir(tmp_path / "straight") if n.endswith(".pt"))
    assert names == ["decoder.pt", "stage1.pt", "stage2.pt", "stage3.pt", "vision.pt"]
    for n in names:
        state = torch.load(tmp_path / "straight" / n, weights_only=True)
        assert isinstance(state["rng"]["python"], list) and isinstance(state["rng"]["torch"], list), n
    crashed = tmp_path / "crashed"
    shutil.copytree(tmp_path / "straight", crashed)
    shutil.rmtree(crashed / "model")
    os.remove(crashed / "stage3.pt")
    two = torch.load(crashed / "stage2.pt", weights_only=True)
    assert two["step"] == 4
    resumed = pt.pretrain(cfg, str(crashed))
    from safetensors.torch import load_file

    want, got = load_file(os.path.join(straight, "model.safetensors")), load_file(os.path.join(resumed, "model.safetensors"))
    assert all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("field,value,words", [
    ("vq_lr", float("inf"), "vq_lr=inf: must be a finite number"),
    ("s3_lr", -1e-3, "s3_lr=-0.001: a learning rate must be above 0"),
    ("gen_weight", float("nan"), "gen_weight=nan: must be a finite number"),
    ("rank_weight", float("inf"), "rank_weight=inf: must be a finite number"),
    ("seed", -1, "seed=-1: must be at least 0 and at most 4294967295"),
    ("seed", 2**32, "seed=4294967296: must be at least 0"),
    ("data_workers", 10_000, "data_workers=10000: must be at least 0 and at most 256"),
    ("vq_crop", -8, "vq_crop=-8: must be at least 0"),
    ("lm_steps", 2.5, "lm_steps=2.5: expected int"),
    ("bf16", 1, "bf16=1: expected bool"),
])
def test_non_finite_floats_out_of_range_seeds_and_wrong_types_are_refused_with_the_fix(tmp_path, field, value, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        pretrain("smoke", str(tmp_path / "run"), **{field: value})
    assert f"--set {field}=" in str(e.value)  # the message says how to fix it
    assert not (tmp_path / "run").exists()


def test_a_damaged_recipe_file_in_the_run_folder_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    RunFolder(resolve("smoke", threads=1), str(run)).close()
    (run / "pretrain_config.json").write_text('{"lm_steps": 3')
    with pytest.raises(ConfigError, match="pretrain_config.json is not valid JSON"):
        RunFolder(resolve("smoke", threads=1), str(run))


def test_the_help_names_every_preset_and_the_cli_reads_presets_and_recipe_files(tmp_path):
    from gvu import cli

    r = subprocess.run([sys.executable, "-m", "gvu.cli", "pretrain", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "--config FILE" in text and "configs/archive/pretrain-NAME.json" in text
    for name in pt.preset_names():
        assert name in text, name
    r = subprocess.run([sys.executable, "-m", "gvu.cli", "pretrain", "--preset", "nanoo", "--out", str(tmp_path / "a")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown preset 'nanoo'" in r.stderr and "Traceback" not in r.stderr
    # --config reads an archived recipe by path, as --preset reads it by name
    seen = []
    args = ["pretrain", "--config", str(CONFIGS / "archive" / "pretrain-nano-v5.json"), "--out", str(tmp_path / "b")]
    with pytest.MonkeyPatch.context() as m:
        m.setattr(pt, "run_stages", lambda cfg, out: seen.append(cfg) or out + "/model")
        assert cli.main(args) == 0
    assert seen == [resolve("nano-v5")]


def test_a_stage_file_of_the_older_format_still_loads_without_unpickling_and_restores_its_streams(tmp_path):
    """Stage files written before the RNG states were plain lists hold Python's state as a tuple and torch's as a
    tensor: weights_only=True reads both, and the restored streams draw what the saved ones would have."""
    import random

    from gvu.checkpoint import python_rng_tuple
    from gvu.models.pretrain.files import load_stage, set_global_rngs

    data = random.Random(5)
    random.seed(1)
    torch.manual_seed(2)
    torch.save({"rng": {"python": random.getstate(), "torch": torch.get_rng_state()}, "data_rng": data.getstate(),
                "step": 3}, tmp_path / "stage1.pt")
    want = (random.random(), torch.rand(1).item(), data.random())
    state = load_stage(str(tmp_path / "stage1.pt"), "cpu")
    set_global_rngs(state["rng"])
    again = random.Random()
    again.setstate(python_rng_tuple(state["data_rng"]))
    assert (random.random(), torch.rand(1).item(), again.random()) == want
