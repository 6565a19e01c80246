"""Checkpoints run no code when loaded, are checked against their manifest, and a bad one is a clear error."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import gvu.train as train_mod
from gvu import checkpoint
from gvu.checkpoint import CheckpointCorrupt, decode_tree, encode_tree
from gvu.config import TrainConfig
from gvu.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny(model_dir, **kw):
    base = dict(model=model_dir, steps=4, batch_prompts=2, group_size=2, train_prompts=16, eval_every=0, grid_every=0,
                checkpoint_every=1, threads=1, final_eval=False, lr=1e-3, warmup_steps=0)
    return TrainConfig(**{**base, **kw})


def gvu_cli(*args, cwd=None):
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "gvu.cli", *map(str, args)], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


def adam_after_one_step(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt


def same_state(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


# ----------------------------------------------------------------------------------------------- the format

def test_a_nested_state_survives_json_and_safetensors_exactly():
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.arange(4.0)}},
             "param_groups": [{"betas": (0.9, 0.999), "lr": float("inf"), "foreach": None, "params": [0]}],
             "__tensor__": "a plain key that looks like a marker"}
    tensors = {}
    encoded = json.loads(json.dumps(encode_tree(state, tensors)))  # through JSON text, as on disk
    assert sorted(tensors) == ["t0", "t1"]  # the two tensors, moved out and named
    back = decode_tree(encoded, tensors)
    assert same_state(back, state)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999) and 0 in back["state"]  # a tuple, an int key


def test_save_and_load_restore_weights_optimiser_rng_and_step(tmp_path):
    model, opt = adam_after_one_step()
    ckpt = checkpoint.save(str(tmp_path), 7, model, opt, extra={"low_signal": 2}, extra_tensors={"ema.w": torch.ones(2)})
    expect_opt = opt.state_dict()
    expect_rand = torch.rand(3)  # drawn after the save: a restored RNG draws the same
    other, other_opt = adam_after_one_step(seed=1)
    step, extra, tensors = checkpoint.load(ckpt, other, other_opt)
    assert (step, extra) == (7, {"low_signal": 2}) and torch.equal(tensors["ema.w"], torch.ones(2))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert same_state(other_opt.state_dict(), expect_opt)
    assert torch.equal(torch.rand(3), expect_rand)
    manifest = json.load(open(os.path.join(ckpt, "manifest.json")))
    assert sorted(manifest["files"]) == ["extra.safetensors", "optimizer.safetensors", "state.json",
                                         "trainable.safetensors"]
    assert manifest["files"]["state.json"]["size"] == os.path.getsize(os.path.join(ckpt, "state.json"))


# ----------------------------------------------------------------------------------------------- corruption

def two_checkpoints(tmp_path):
    model, opt = adam_after_one_step()
    checkpoint.save(str(tmp_path), 1, model, opt)
    return checkpoint.save(str(tmp_path), 2, model, opt, extra_tensors={"ema.w": torch.ones(2)})


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def flip(path):
    with open(path, "r+b") as f:  # two bytes in the middle, as a bad disk or copy would
        f.seek(os.path.getsize(path) // 2)
        b = f.read(2)
        f.seek(os.path.getsize(path) // 2)
        f.write(bytes(x ^ 0x5A for x in b))


@pytest.mark.parametrize("damage", [truncate, flip, os.remove], ids=["truncated", "flipped", "deleted"])
@pytest.mark.parametrize("name", ["trainable.safetensors", "optimizer.safetensors", "extra.safetensors", "state.json",
                                  "manifest.json"])
def test_each_damaged_checkpoint_file_is_an_error_that_names_the_newest_intact_one(tmp_path, name, damage):
    ckpt = two_checkpoints(tmp_path)
    damage(os.path.join(ckpt, name))
    with pytest.raises(CheckpointCorrupt, match=r"latest checkpoint .*step_000002 is corrupt: .*newest intact checkpoint "
                                                r"is step 1: resume from it with `gvu train --out .* --resume "
                                                r"--resume-from 1`"):
        checkpoint.resume_point(str(tmp_path))
    assert checkpoint.resume_point(str(tmp_path), resume_from=1).endswith("step_000001")
    with pytest.raises(CheckpointCorrupt):  # and loading it directly is refused too
        checkpoint.load(ckpt, torch.nn.Linear(3, 2), None)


@pytest.mark.parametrize("content", ["/etc", "..", "../../step_000001", "step_000001/../step_000002", "step_9",
                                     "step_000003", "\x00\xff"])
def test_latest_must_name_a_step_folder_inside_checkpoints(tmp_path, content):
    two_checkpoints(tmp_path)
    with open(tmp_path / "checkpoints/latest", "w", encoding="latin-1") as f:
        f.write(content)
    with pytest.raises(CheckpointCorrupt, match="newest intact checkpoint is step 2"):
        checkpoint.resume_point(str(tmp_path))


def test_a_missing_latest_resumes_from_the_newest_intact_checkpoint_and_says_so(tmp_path, capsys):
    ckpt = two_checkpoints(tmp_path)
    os.remove(tmp_path / "checkpoints/latest")
    assert checkpoint.resume_point(str(tmp_path)) == ckpt
    assert "latest is missing: resuming from the newest intact checkpoint, step 2" in capsys.readouterr().err
    truncate(os.path.join(ckpt, "trainable.safetensors"))
    assert checkpoint.resume_point(str(tmp_path)).endswith("step_000001")
    truncate(str(tmp_path / "checkpoints/step_000001/state.json"))
    with pytest.raises(CheckpointCorrupt, match="none of its checkpoints is intact"):  # never a restart from 0
        checkpoint.resume_point(str(tmp_path))


def test_a_run_without_latest_resumes_and_ends_as_an_uninterrupted_run(model_dir, tmp_path):
    cfg = tiny(model_dir)
    train_mod.train(cfg, str(tmp_path / "straight"), progress=False)
    train_mod.train(tiny(model_dir, steps=2), str(tmp_path / "cut"), progress=False)
    os.remove(tmp_path / "cut/checkpoints/latest")
    train_mod.train(cfg, str(tmp_path / "cut"), resume=True, progress=False)
    a = load_file(str(tmp_path / "straight/checkpoints/step_000004/trainable.safetensors"))
    b = load_file(str(tmp_path / "cut/checkpoints/step_000004/trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(ln)["step"] for ln in open(tmp_path / "cut/metrics.jsonl")]
    assert steps == [1, 2, 3, 4]  # resumed at step 2, not restarted at 0 (which would repeat 1 and 2)


def test_an_interrupted_save_leaves_no_tmp_folder(tmp_path, monkeypatch):
    model, opt = adam_after_one_step()

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(str(tmp_path), 1, model, opt)
    assert os.listdir(tmp_path / "checkpoints") == []


# ----------------------------------------------------------------------------------------------- old format (pickle)

class Payload:
    """Unpickling this writes a marker file: what a planted pickle would do, harmlessly."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


def to_old_format(ckpt: str, state: dict) -> None:
    """Rewrite a checkpoint folder as gvu's old format: state.pt (a pickle) and no manifest."""
    for name in ("manifest.json", "state.json", "optimizer.safetensors"):
        os.remove(os.path.join(ckpt, name))
    torch.save(state, os.path.join(ckpt, "state.pt"))


def test_a_planted_pickle_is_refused_on_resume_and_never_runs(model_dir, tmp_path):
    run = tmp_path / "run"
    train_mod.train(tiny(model_dir, steps=2), str(run), progress=False)
    marker = tmp_path / "marker"
    to_old_format(str(run / "checkpoints/step_000002"), {"optimizer": Payload(str(marker)), "step": 2, "rng": {}})
    r = gvu_cli("train", "--out", run, "--resume")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "old format" in r.stderr and "--trust-checkpoint-pickle" in r.stderr
    # a `latest` naming a pickle outside the run (an absolute path, or up and out) is refused as well
    outside = tmp_path / "elsewhere/step_000002"
    shutil.copytree(run / "checkpoints/step_000002", outside)
    for name in (str(outside), "../../elsewhere/step_000002"):
        (run / "checkpoints/latest").write_text(name)
        r = gvu_cli("train", "--out", run, "--resume")
        assert r.returncode == 2 and "not a checkpoint folder of this run" in r.stderr, r.stderr
    assert not marker.exists()


def test_an_old_format_checkpoint_loads_only_with_trust_and_resumes_exactly(model_dir, tmp_path, capsys):
    cfg = tiny(model_dir)
    train_mod.train(cfg, str(tmp_path / "straight"), progress=False)
    old = tmp_path / "old"
    train_mod.train(tiny(model_dir, steps=2), str(old), progress=False)
    ckpt = str(old / "checkpoints/step_000002")
    state = checkpoint.read_state(ckpt)
    rng = {**state["rng"], "torch": torch.tensor(state["rng"]["torch"], dtype=torch.uint8)}  # as old runs held it
    to_old_format(ckpt, {"optimizer": state["optimizer"], "step": 2, "rng": rng, "extra": state["extra"]})
    with pytest.raises(UserError, match="old format.*--trust-checkpoint-pickle"):
        train_mod.train(cfg, str(old), resume=True, progress=False)
    train_mod.train(cfg, str(old), resume=True, progress=False, trust_pickle=True)
    assert "warning: --trust-checkpoint-pickle: unpickling" in capsys.readouterr().err
    a = load_file(str(tmp_path / "straight/checkpoints/step_000004/trainable.safetensors"))
    b = load_file(str(old / "checkpoints/step_000004/trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not checkpoint.is_legacy(str(old / "checkpoints/step_000004"))  # what it writes is the new format


def test_no_pickle_load_is_left_in_the_package_but_the_trusted_one():
    hits = []
    for root in ("gvu", "benchmarks", "experiments"):
        for dirpath, _, files in os.walk(os.path.join(REPO, root)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    for i, line in enumerate(open(path, encoding="utf-8"), 1):
                        if "weights_only=False" in line:
                            hits.append(f"{os.path.relpath(path, REPO)}:{i}")
    # the GenEval detector converter reads a third-party mmdet .pth whose `meta` torch's weights_only loader may
    # refuse; it then passes its own allowlisting unpickler (tensors and plain containers only), not pickle's
    restricted = [h for h in hits if h.startswith("gvu/eval/geneval/convert.py:")]
    assert len(restricted) == 1
    assert "pickle_module=_tensors_only_pickle()" in open(os.path.join(REPO, restricted[0].split(":")[0])).read()
    left = [h for h in hits if h not in restricted]
    assert len(left) == 1 and left[0].startswith("gvu/checkpoint.py:")  # _read_legacy_state, behind the flag
