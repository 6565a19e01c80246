"""`gvu train` under torchrun with 2 gloo processes gives the same run as one process with the same global batch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gvu import checkpoint
from gvu.models.nano import SPECS, build_random
from gvu.models.pretrain import save_model

REPO = Path(__file__).resolve().parents[1]


def gvu_train(args, n_proc, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n_proc)] \
        if n_proc > 1 else [sys.executable]
    proc = subprocess.run(launcher + ["-m", "gvu", "train", *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("parallel,lora", [("ddp", 0), ("ddp", 2), ("fsdp", 0), ("fsdp", 2)])
def test_two_gloo_processes_equal_one_process(tmp_path, parallel, lora):
    model_dir = tmp_path / "model"
    model, tok = build_random("smoke", seed=0)
    save_model(model, tok, SPECS["smoke"], str(model_dir))
    cfg = {"model": str(model_dir), "steps": 2, "batch_prompts": 2, "group_size": 2, "train_prompts": 16,
           "eval_every": 0, "grid_every": 0, "final_eval": False, "checkpoint_every": 2, "threads": 1,
           "lr": 1e-3, "warmup_steps": 0, "lora_r": lora, "beta": 0.05, "parallel": parallel}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    for n in (1, 2):  # under LoRA the two processes also checkpoint gradients, as the Janus-Pro presets do
        extra = ["--set", "gradient_checkpointing=true"] if n == 2 and lora else []
        gvu_train(["--config", "cfg.json", "--out", f"run{n}", *extra], n, tmp_path)
    a = load_file(str(tmp_path / "run1/checkpoints/step_000002/trainable.safetensors"))
    b = load_file(str(tmp_path / "run2/checkpoints/step_000002/trainable.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst
    moved = load_file(str(tmp_path / "run1/checkpoints/step_000002/trainable.safetensors"))
    assert any(float(v.abs().sum()) > 0 for v in moved.values())
    m1 = [json.loads(x) for x in open(tmp_path / "run1/metrics.jsonl")]
    m2 = [json.loads(x) for x in open(tmp_path / "run2/metrics.jsonl")]
    for r1, r2 in zip(m1, m2, strict=True):
        for k in ("reward/mean", "reward/std", "loss/total", "policy/kl"):
            assert abs(r1[k] - r2[k]) < 1e-5, (k, r1[k], r2[k])


def test_two_processes_share_the_evaluations_and_write_what_one_process_writes(tmp_path):
    model_dir = tmp_path / "model"
    model, tok = build_random("smoke", seed=0)
    save_model(model, tok, SPECS["smoke"], str(model_dir))
    # batches of 2 images: the step-0 evaluation has 4 batches (2 a rank), each final split 3 (2 on rank 0, 1 on rank 1)
    cfg = {"model": str(model_dir), "steps": 1, "batch_prompts": 2, "group_size": 2, "train_prompts": 16,
           "eval_every": 1, "eval_prompts": 4, "eval_images_per_prompt": 2, "eval_batch": 2, "grid_every": 1,
           "grid_prompts": 2, "final_eval": True, "final_eval_prompts": 3, "final_images_per_prompt": 2,
           "checkpoint_every": 1, "threads": 1, "lr": 1e-3, "warmup_steps": 0, "parallel": "ddp"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    for n in (1, 2):
        gvu_train(["--config", "cfg.json", "--out", f"run{n}"], n, tmp_path)
    evals = {}
    for n in (1, 2):
        lines = [json.loads(x) for x in open(tmp_path / f"run{n}/metrics.jsonl")]
        evals[n] = [r for r in lines if "eval/reward" in r]
        assert [r["step"] for r in evals[n]] == [0, 1]
        assert (tmp_path / f"run{n}/grids/step_000001.png").exists() and (tmp_path / f"run{n}/summary.md").exists()
    # before training both runs evaluate the same weights with the same batches and seeds: the same numbers
    for k, v in evals[1][0].items():
        assert evals[2][0][k] == pytest.approx(v, abs=1e-6), k
    before = [json.loads((tmp_path / f"run{n}/before.json").read_text()) for n in (1, 2)]
    for split in ("eval", "ood"):
        a, b = before[0][split], before[1][split]
        assert a["n"] == b["n"] == 6 and a["reward"] == pytest.approx(b["reward"], abs=1e-6)
        assert a["per_tag"] == pytest.approx(b["per_tag"], abs=1e-9)
        assert a["reward_per_tag"] == pytest.approx(b["reward_per_tag"], abs=1e-6)
    after = json.loads((tmp_path / "run2/after.json").read_text())
    assert after["eval"]["n"] == after["ood"]["n"] == 6
    # the step-0 grid: each rank sampled half of its rows, rank 0 decoded and scored them as one process does
    grids = [(tmp_path / f"run{n}/grids/step_000000.png").read_bytes() for n in (1, 2)]
    assert grids[0] == grids[1]
    diags = [[r for r in map(json.loads, open(tmp_path / f"run{n}/diagnostics.jsonl")) if r["step"] == 0] for n in (1, 2)]
    assert len(diags[0]) == 2 and diags[0] == diags[1]


def test_fsdp_resume_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    model_dir = tmp_path / "model"
    model, tok = build_random("smoke", seed=0)
    save_model(model, tok, SPECS["smoke"], str(model_dir))
    cfg = {"model": str(model_dir), "steps": 2, "batch_prompts": 2, "group_size": 2, "train_prompts": 16,
           "eval_every": 0, "grid_every": 0, "final_eval": False, "checkpoint_every": 1, "threads": 1,
           "lr": 1e-3, "warmup_steps": 0, "beta": 0.05, "parallel": "fsdp"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    gvu_train(["--config", "cfg.json", "--out", "full"], 2, tmp_path)
    (tmp_path / "cfg1.json").write_text(json.dumps({**cfg, "steps": 1}))
    gvu_train(["--config", "cfg1.json", "--out", "part"], 2, tmp_path)
    # continue the 1-step run to 2 steps: same schedule settings except the length, so edit its saved config
    saved = json.loads((tmp_path / "part/config.json").read_text())
    (tmp_path / "part/config.json").write_text(json.dumps({**saved, "steps": 2}))
    gvu_train(["--config", "cfg.json", "--out", "part", "--resume"], 2, tmp_path)
    a = load_file(str(tmp_path / "full/checkpoints/step_000002/trainable.safetensors"))
    b = load_file(str(tmp_path / "part/checkpoints/step_000002/trainable.safetensors"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-6, worst
    sa = checkpoint.read_optimizer_state(str(tmp_path / "full/checkpoints/step_000002"))
    assert "state" in sa and len(sa["state"]) > 0  # the full optimiser state was gathered from both ranks


def test_a_world_size_that_does_not_divide_the_batch_is_refused(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}
    cfg = {"model": str(tmp_path / "model"), "batch_prompts": 2, "group_size": 2}  # --out may not lie inside it
    (tmp_path / "model").mkdir()
    (tmp_path / "model/config.json").write_text("{}")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    proc = subprocess.run([sys.executable, "-m", "gvu", "train", "--config", "cfg.json", "--out", "run"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "does not divide" in proc.stderr, proc.stderr[-2000:]
