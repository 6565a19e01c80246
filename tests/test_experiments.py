"""The step bookkeeping of experiments/deadline_compare.py: which checkpoint every run is evaluated at."""

import importlib.util
import json
import os
from types import SimpleNamespace

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def dc():
    path = os.path.join(HERE, "..", "experiments", "deadline_compare.py")
    spec = importlib.util.spec_from_file_location("deadline_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_run(root, name, steps, committed=None, results=()):
    """A run folder with checkpoint folders at `steps` and `latest` pointing at `committed` (default: the last)."""
    run = os.path.join(root, name)
    for s in steps:
        os.makedirs(os.path.join(run, "checkpoints", f"step_{s:06d}"))
    if steps:
        with open(os.path.join(run, "checkpoints", "latest"), "w") as f:
            f.write(f"step_{(committed or max(steps)):06d}")
    os.makedirs(run, exist_ok=True)
    for s in results:
        with open(os.path.join(run, f"result-step{s}.json"), "w") as f:
            json.dump({}, f)


def args_for(root, report=False, fractions=(0.5,)):
    return SimpleNamespace(out=str(root), set=[], max_steps=100000, model="models/nano-janus", threads=1,
                           eval_prompts=None, understanding_prompts=8, fractions=list(fractions), report=report)


def test_reached_is_the_checkpoint_a_resume_would_continue_from(dc, tmp_path):
    # stopped after writing step 150's folder but before pointing `latest` at it: a resume redoes step 150
    make_run(tmp_path, "gvu_policy-s0", [50, 100, 150], committed=100)
    assert dc.reached(str(tmp_path / "gvu_policy-s0")) == 100
    assert dc.reached(str(tmp_path / "missing")) == 0


def test_every_run_is_evaluated_at_the_step_all_reached(dc, tmp_path):
    make_run(tmp_path, "gvu_policy-s0", [50, 100, 150, 200, 250, 300])
    make_run(tmp_path, "oracle-s0", [50, 100, 150, 200, 250])
    runs = [("base", 0), ("gvu_policy", 0), ("oracle", 0)]
    # common step 250; half of it is 125, rounded down to the preset's checkpoint_every (50): 100
    assert dc.eval_steps(args_for(tmp_path), runs) == [250, 100]
    assert dc.eval_steps(args_for(tmp_path, fractions=()), runs) == [250]


def test_report_uses_the_steps_every_run_has_a_result_at(dc, tmp_path):
    make_run(tmp_path, "gvu_policy-s0", [], results=(50, 250, 500))
    make_run(tmp_path, "oracle-s0", [], results=(50,))
    runs = [("gvu_policy", 0), ("oracle", 0)]
    assert dc.eval_steps(args_for(tmp_path, report=True), runs) == [50]
    assert dc.eval_steps(args_for(tmp_path, report=True), runs[:1]) == [500, 250, 50]
