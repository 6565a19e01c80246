"""kill -9 at random moments, and while checkpoints are being written, then --resume: the run ends exactly as an
uninterrupted one (weights, optimiser state, RNG state and metrics, bit for bit)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from gvu import checkpoint
from gvu.models.nano import SPECS, build_random
from gvu.models.pretrain import save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def start(cfg_path, out, resume: bool) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gvu.cli", "train", "--config", str(cfg_path), "--out", str(out)]
    return subprocess.Popen(cmd + (["--resume"] if resume else []), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def writing(out) -> bool:
    """A checkpoint is being written: its temporary folder (or latest's) exists."""
    try:
        return any(n.endswith(".tmp") for n in os.listdir(os.path.join(out, "checkpoints")))
    except FileNotFoundError:
        return False


def kill_when(p: subprocess.Popen, ready, deadline: float) -> bool:
    """SIGKILL p as soon as ready() holds (polled without pause: a tiny model's save lasts milliseconds); False if
    p ended or the deadline passed first."""
    while p.poll() is None and time.time() < deadline:
        if ready():
            p.send_signal(signal.SIGKILL)
            p.wait()
            return True
    return False


def saved_step(out) -> int:
    try:
        return int((out / "checkpoints/latest").read_text()[5:])
    except (FileNotFoundError, ValueError):
        return 0


def final_state(out) -> tuple[dict, dict, dict]:
    ckpt = checkpoint.latest(str(out))
    state = json.load(open(os.path.join(ckpt, "state.json")))
    return load_file(os.path.join(ckpt, "trainable.safetensors")), checkpoint.read_optimizer_state(ckpt), state["rng"]


def metrics(out) -> list[dict]:
    rows = [json.loads(ln) for ln in open(os.path.join(out, "metrics.jsonl"))]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.slow  # 17 process starts of a few seconds each
def test_kill_9_at_random_moments_and_mid_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path):
    model = tmp_path / "model"
    m, tok = build_random("smoke", seed=0)
    save_model(m, tok, SPECS["smoke"], str(model))
    cfg = {"model": str(model), "steps": 40, "batch_prompts": 2, "group_size": 2, "train_prompts": 16, "eval_every": 0,
           "grid_every": 0, "final_eval": False, "checkpoint_every": 1, "threads": 1, "lr": 1e-3, "warmup_steps": 0}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    t0 = time.time()
    straight = start(tmp_path / "cfg.json", tmp_path / "straight", resume=False)
    while straight.poll() is None and not (tmp_path / "straight/metrics.jsonl").exists():
        time.sleep(0.01)
    startup = time.time() - t0  # until the first metrics line: loading, set-up and step 1
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    out, rng = tmp_path / "chaos", random.Random(0)
    kills = {"start-up": 0, "mid-step": 0, "mid-checkpoint": 0}
    modes = list(kills) * 5
    for attempt in range(len(modes) + 5):
        p = start(tmp_path / "cfg.json", out, resume=(out / "config.json").exists())
        mode = modes[attempt] if attempt < len(modes) else None
        if mode == "start-up":  # imports, model loading, resume, the first step
            at = time.time() + rng.uniform(0.2, startup)
            ready = (lambda at: lambda: time.time() >= at)(at)
        elif mode == "mid-step":  # 1 or 2 checkpoints on, then at a random moment of a step, log write or save
            target, jitter, seen = saved_step(out) + rng.randint(1, 2), rng.uniform(0.0, 0.2), {}
            ready = (lambda target, jitter, seen: lambda: saved_step(out) >= target and
                     time.time() >= seen.setdefault("t", time.time()) + jitter)(target, jitter, seen)
        elif mode == "mid-checkpoint":  # while a checkpoint folder (or latest) is being written
            ready = lambda: writing(out)  # noqa: E731
        if mode is not None and kill_when(p, ready, time.time() + 600):
            kills[mode] += 1
            continue
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        if saved_step(out) == 40:
            break
    assert min(kills.values()) >= 4, kills  # the run did not end before the kills were done
    a, b = final_state(tmp_path / "straight"), final_state(out)
    assert same(a[0], b[0]), "trainable weights differ"
    assert same(a[1], b[1]), "optimiser state differs"
    assert a[2] == b[2], "RNG state differs"
    assert metrics(tmp_path / "straight") == metrics(out)
    assert not os.path.exists(out / ".gvu-lock")
