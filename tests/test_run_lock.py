"""One writer per run folder: a second process is refused, with the holder's pid, and nothing of the run is lost."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from gvu import run_lock
from gvu.models.nano import SPECS, build_random
from gvu.models.pretrain import save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}


def gvu_cli(*args, wait=True):
    cmd = [sys.executable, "-m", "gvu.cli", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def tree_hashes(folder) -> dict:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            if name != run_lock.LOCK_NAME:
                path = os.path.join(dirpath, name)
                out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_a_second_lock_on_a_folder_is_refused_with_the_holders_pid(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gvu.run_lock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
                               str(tmp_path / "run")], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_lock.RunLocked, match=f"pid {holder.pid}"):
            run_lock.RunLock(str(tmp_path / "run")).acquire()
        with pytest.raises(run_lock.RunLocked, match=f"pid {holder.pid}"):
            run_lock.check_free(str(tmp_path / "run"))
    finally:
        holder.kill()  # kill -9: the kernel lets go of the lock with the process
        holder.wait()
    with run_lock.hold_run_lock(str(tmp_path / "run")) as lock:  # a dead holder's file is taken over
        assert lock.held and run_lock.holder_pid(str(tmp_path / "run")) == str(os.getpid())
    assert not os.path.exists(run_lock.lock_path(str(tmp_path / "run")))  # let go: the file is removed


def test_clear_run_dir_keeps_only_the_held_lock(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    with run_lock.RunLock(str(tmp_path)) as lock:
        run_lock.clear_run_dir(str(tmp_path), lock)
        assert os.listdir(tmp_path) == [run_lock.LOCK_NAME]
    with pytest.raises(RuntimeError, match="without holding its lock"):
        run_lock.clear_run_dir(str(tmp_path), run_lock.RunLock(str(tmp_path)))


@pytest.mark.slow  # four gvu processes: about 30 s of CPU, 95 s on a busy 2-core machine
def test_a_live_train_run_refuses_resume_overwrite_and_a_second_run_and_loses_nothing(tmp_path):
    model = tmp_path / "model"
    m, tok = build_random("smoke", seed=0)
    save_model(m, tok, SPECS["smoke"], str(model))
    cfg = {"model": str(model), "steps": 10_000, "batch_prompts": 2, "group_size": 2, "train_prompts": 16,
           "eval_every": 0, "grid_every": 0, "final_eval": False, "checkpoint_every": 1, "threads": 1, "lr": 1e-3,
           "warmup_steps": 0}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    live = gvu_cli("train", "--config", tmp_path / "cfg.json", "--out", run, wait=False)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoints/latest").exists():  # the live run has written a checkpoint
            assert live.poll() is None and time.time() < deadline, live.stderr.read() if live.poll() is not None else ""
            time.sleep(0.2)
        live.send_signal(signal.SIGSTOP)  # frozen while we look, so that its files hold still (it keeps the lock)
        before = tree_hashes(run)
        attempts = [gvu_cli("train", "--out", run, "--resume", wait=False),
                    gvu_cli("train", "--config", tmp_path / "cfg.json", "--out", run, "--overwrite", wait=False),
                    gvu_cli("train", "--config", tmp_path / "cfg.json", "--out", run, wait=False)]
        for p in attempts:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 2 and "Traceback" not in err, err
            assert err.strip().splitlines()[-1].startswith(f"gvu: error: {run} is in use by another gvu process "
                                                           f"(pid {live.pid})"), err
        assert tree_hashes(run) == before  # nothing of the live run was deleted, truncated or appended to
        live.send_signal(signal.SIGCONT)
        live.send_signal(signal.SIGTERM)  # stopped the way a scheduler stops a job
        live.wait(timeout=120)
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    assert not os.path.exists(run_lock.lock_path(str(run)))  # SIGTERM let the lock go
    assert not [n for n in os.listdir(run / "checkpoints") if n.endswith(".tmp")]
