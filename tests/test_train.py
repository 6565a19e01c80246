"""The GvU-GRPO loop on a tiny random Janus: parameters move, resume is exact, guards fire."""

import json
import os
from dataclasses import asdict, replace

import pytest
import torch
from safetensors.torch import load_file

import gvu.train as train_mod
from gvu import runs
from gvu.config import ConfigError, RewardConfig, SamplingConfig, TrainConfig
from gvu.errors import SetupError
from gvu.models.janus import JanusBackend
from gvu.reward import RewardOutput


def tiny(model_dir, **kw):
    base = dict(model=model_dir, steps=4, batch_prompts=2, group_size=2, train_prompts=16, eval_every=2, eval_prompts=2,
                eval_images_per_prompt=1, grid_every=0, checkpoint_every=2, threads=1, final_eval=False, lr=1e-3, warmup_steps=0)
    base.update(kw)
    return TrainConfig(**base)


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def run_capturing_model(cfg, run_dir, monkeypatch, **kw):
    """Run train() and return the backend's model (captured from setup_trainable)."""
    box = {}
    real = train_mod.setup_trainable

    def spy(backend, c):
        out = real(backend, c)
        box["model"], box["before"] = backend.model, weights(backend.model)
        return out

    monkeypatch.setattr(train_mod, "setup_trainable", spy)
    train_mod.train(cfg, run_dir, progress=False, **kw)
    return box


def test_one_full_finetuning_step_changes_every_trainable_parameter(model_dir, tmp_path, monkeypatch):
    box = run_capturing_model(tiny(model_dir, steps=1, eval_every=0), str(tmp_path / "run"), monkeypatch)
    after = weights(box["model"])
    unchanged = [n for n in after if torch.equal(after[n], box["before"][n])]
    assert len(after) > 10 and unchanged == []


def test_lora_trains_only_adapters_and_both_factors_move(model_dir, tmp_path, monkeypatch):
    # LoRA's B starts at zero, so A gets no gradient on step 1: after two steps both factors have moved
    box = run_capturing_model(tiny(model_dir, steps=2, eval_every=0, lora_r=2), str(tmp_path / "run"), monkeypatch)
    after = weights(box["model"])
    assert after and all("lora_" in n and "language_model" in n for n in after)
    assert [n for n in after if torch.equal(after[n], box["before"][n])] == []


def strip_perf(path):
    rows = [json.loads(ln) for ln in open(path)]
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def crash_on_update(monkeypatch, n):
    """Make the n-th call of update() raise KeyboardInterrupt, as a crash would; returns a function that undoes it."""
    real_update, calls = train_mod.update, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated crash")
        return real_update(*a, **k)

    monkeypatch.setattr(train_mod, "update", crashing)
    return lambda: monkeypatch.setattr(train_mod, "update", real_update)


def straight_and_resumed(cfg, tmp_path, monkeypatch, crash_at: int) -> None:
    """Run cfg uninterrupted into tmp_path/straight, and into tmp_path/resumed with a crash in update crash_at and a
    --resume after it."""
    train_mod.train(cfg, str(tmp_path / "straight"), progress=False)
    undo = crash_on_update(monkeypatch, crash_at)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, str(tmp_path / "resumed"), progress=False)
    undo()
    train_mod.train(cfg, str(tmp_path / "resumed"), resume=True, progress=False)


def test_resume_after_a_crash_equals_an_uninterrupted_run(model_dir, tmp_path, monkeypatch):
    cfg = tiny(model_dir)
    straight_and_resumed(cfg, tmp_path, monkeypatch, 3)

    a = load_file(str(tmp_path / "straight/checkpoints/step_000004/trainable.safetensors"))
    b = load_file(str(tmp_path / "resumed/checkpoints/step_000004/trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert strip_perf(tmp_path / "straight/metrics.jsonl") == strip_perf(tmp_path / "resumed/metrics.jsonl")


def test_an_ema_judge_under_lora_checkpoints_only_its_adapters_and_resumes_exactly(model_dir, tmp_path, monkeypatch):
    cfg = tiny(model_dir, lora_r=4, reward=RewardConfig(judge="ema", ema_decay=0.5), eval_every=0)
    straight_and_resumed(cfg, tmp_path, monkeypatch, 3)
    ema = {run: load_file(str(tmp_path / run / "checkpoints/step_000004/extra.safetensors")) for run in ("straight", "resumed")}
    adapters = load_file(str(tmp_path / "straight/checkpoints/step_000004/trainable.safetensors"))
    # one EMA tensor per trainable (LoRA) parameter, none for the frozen base model
    assert sorted(k.removeprefix("ema.") for k in ema["straight"]) == sorted(adapters) and len(adapters) > 0
    assert all(torch.equal(ema["straight"][k], ema["resumed"][k]) for k in ema["straight"])
    assert strip_perf(tmp_path / "straight/metrics.jsonl") == strip_perf(tmp_path / "resumed/metrics.jsonl")


def test_a_resumed_run_writes_each_steps_diagnostics_once(model_dir, tmp_path, monkeypatch):
    # grids (with their per-token diagnostics) every step, checkpoints every 2: a crash in step 4 leaves step 3's
    # diagnostics written after the last checkpoint (step 2); the resumed run writes step 3 again
    cfg = tiny(model_dir, grid_every=1, grid_prompts=1, eval_every=0, checkpoint_every=2)
    train_mod.train(cfg, str(tmp_path / "straight"), progress=False)
    undo = crash_on_update(monkeypatch, 4)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, str(tmp_path / "resumed"), progress=False)
    assert [json.loads(ln)["step"] for ln in open(tmp_path / "resumed/diagnostics.jsonl")] == [1, 2, 3]
    undo()
    train_mod.train(cfg, str(tmp_path / "resumed"), resume=True, progress=False)
    straight = [json.loads(ln) for ln in open(tmp_path / "straight/diagnostics.jsonl")]
    resumed = [json.loads(ln) for ln in open(tmp_path / "resumed/diagnostics.jsonl")]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4] and resumed == straight


def test_a_resume_before_the_first_checkpoint_starts_the_logs_afresh(model_dir, tmp_path, monkeypatch):
    # checkpoint_every=0 saves only the last step, so a crash in step 2 of 3 leaves logs and no checkpoint
    cfg = tiny(model_dir, steps=3, eval_every=1, grid_every=1, grid_prompts=1, checkpoint_every=0)
    train_mod.train(cfg, str(tmp_path / "straight"), progress=False)
    undo = crash_on_update(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, str(tmp_path / "resumed"), progress=False)
    assert not (tmp_path / "resumed/checkpoints").exists() or not os.listdir(tmp_path / "resumed/checkpoints")
    undo()
    train_mod.train(cfg, str(tmp_path / "resumed"), resume=True, progress=False)
    assert strip_perf(tmp_path / "straight/metrics.jsonl") == strip_perf(tmp_path / "resumed/metrics.jsonl")
    assert open(tmp_path / "straight/diagnostics.jsonl").read() == open(tmp_path / "resumed/diagnostics.jsonl").read()


def test_checkpoint_every_0_saves_only_the_last_step(model_dir, tmp_path):
    train_mod.train(tiny(model_dir, steps=3, eval_every=0, checkpoint_every=0), str(tmp_path / "run"), progress=False)
    assert sorted(os.listdir(tmp_path / "run/checkpoints")) == ["latest", "step_000003"]
    with pytest.raises(ConfigError, match="checkpoint_every must be >= 0"):
        tiny(model_dir, checkpoint_every=-1).validate()


def test_more_steps_extend_a_finished_run_exactly_under_the_constant_schedule(model_dir, tmp_path):
    train_mod.train(tiny(model_dir), str(tmp_path / "straight"), progress=False)
    train_mod.train(tiny(model_dir, steps=2), str(tmp_path / "short"), progress=False)
    train_mod.train(tiny(model_dir), str(tmp_path / "short"), resume=True, progress=False)  # 2 -> 4 steps
    a = load_file(str(tmp_path / "straight/checkpoints/step_000004/trainable.safetensors"))
    b = load_file(str(tmp_path / "short/checkpoints/step_000004/trainable.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.load(open(tmp_path / "short/config.json"))["steps"] == 4
    assert [r["step"] for r in map(json.loads, open(tmp_path / "short/metrics.jsonl")) if "reward/mean" in r] == [1, 2, 3, 4]


def test_more_steps_under_cosine_or_fewer_steps_are_refused_on_resume(model_dir, tmp_path):
    run = str(tmp_path / "run")
    runs.prepare_run_dir(run, tiny(model_dir, schedule="cosine"), resume=False, overwrite=False)
    with pytest.raises(ValueError, match="constant schedule"):
        runs.prepare_run_dir(run, tiny(model_dir, schedule="cosine", steps=8), resume=True, overwrite=False)
    run2 = str(tmp_path / "run2")
    runs.prepare_run_dir(run2, tiny(model_dir), resume=False, overwrite=False)
    with pytest.raises(ValueError, match="'steps'"):
        runs.prepare_run_dir(run2, tiny(model_dir, steps=2), resume=True, overwrite=False)
    assert json.load(open(os.path.join(run2, "config.json")))["steps"] == 4


def constant_reward(value):
    def fake(cfg, judge, pixels, metadata, evaluator_workers=0):
        return RewardOutput(torch.full((pixels.shape[0],), value))
    return fake


def test_equal_rewards_raise_the_alarm(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "compute_reward", constant_reward(0.5))
    train_mod.train(tiny(model_dir, steps=3, guard_patience=2, eval_every=0), str(tmp_path / "run"), progress=False)
    rows = [json.loads(ln) for ln in open(tmp_path / "run/metrics.jsonl")]
    assert [r["reward/zero_variance_groups"] for r in rows] == [2, 2, 2]
    assert ["alarm" in r for r in rows] == [False, True, True]


def test_the_alarms_count_survives_a_resume(model_dir, tmp_path, monkeypatch):
    # every group's rewards equal from step 1, alarm after 2 such steps: steps 2 and 3 carry it. A crash in step 3
    # resumes from step 2's checkpoint, and step 3 must still see 2 steps without signal before it, not 0.
    monkeypatch.setattr(train_mod, "compute_reward", constant_reward(0.5))
    cfg = tiny(model_dir, steps=3, guard_patience=2, eval_every=0, checkpoint_every=1)
    undo = crash_on_update(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(cfg, str(tmp_path / "run"), progress=False)
    undo()
    train_mod.train(cfg, str(tmp_path / "run"), resume=True, progress=False)
    rows = [json.loads(ln) for ln in open(tmp_path / "run/metrics.jsonl")]
    assert [("alarm" in r, r["step"]) for r in rows] == [(False, 1), (True, 2), (True, 3)]
    assert rows[2]["alarm"].startswith("3 steps")


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(model_dir, tmp_path, monkeypatch):
    cfg = tiny(model_dir, steps=4, eval_every=0)
    real, calls = train_mod.compute_reward, {"n": 0}

    def nan_at_third(c, judge, pixels, metadata, evaluator_workers=0):
        calls["n"] += 1
        return constant_reward(float("nan"))(c, judge, pixels, metadata) if calls["n"] == 3 else real(c, judge, pixels, metadata)

    monkeypatch.setattr(train_mod, "compute_reward", nan_at_third)
    with pytest.raises(train_mod.TrainingDiverged, match="not finite"):
        train_mod.train(cfg, str(tmp_path / "run"), progress=False)
    ckpt = tmp_path / "run/checkpoints/step_000002/trainable.safetensors"
    assert ckpt.exists() and all(torch.isfinite(t).all() for t in load_file(str(ckpt)).values())
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step_000002"


def test_bad_config_and_existing_run_are_refused_before_work(model_dir, tmp_path):
    with pytest.raises(ConfigError, match="group_size"):
        train_mod.train(tiny(model_dir, group_size=1), str(tmp_path / "a"), progress=False)
    with pytest.raises(ConfigError, match="judge"):
        train_mod.train(tiny(model_dir, reward=RewardConfig(judge="teacher")), str(tmp_path / "a"), progress=False)
    with pytest.raises(ConfigError, match="needs reduction=geometric_mean"):
        train_mod.train(tiny(model_dir, reward=RewardConfig(token_weights="surprisal", reduction="min")),
                        str(tmp_path / "a"), progress=False)
    tiny(model_dir, dtype="bfloat16").validate()  # full fine-tuning in bf16 keeps fp32 masters (test_bf16_masters.py)
    tiny(model_dir, dtype="bfloat16", lora_r=4).validate()  # LoRA in bf16 is fine: the adapters train in fp32
    with pytest.raises(ConfigError, match="lora_dropout must be 0"):
        train_mod.train(tiny(model_dir, lora_r=4, lora_dropout=0.1), str(tmp_path / "a"), progress=False)
    few = tmp_path / "few.jsonl"  # 1 prompt for a batch of 2
    few.write_text(json.dumps({"tag": "single_object", "include": [{"class": "cat", "count": 1}],
                               "prompt": "a photo of a cat"}) + "\n")
    with pytest.raises(ValueError, match="1 training prompts, fewer than batch_prompts=2.*batch_prompts=1"):
        train_mod.train(tiny(model_dir, prompts_file=str(few)), str(tmp_path / "a"), progress=False)
    assert not (tmp_path / "a").exists()  # no run folder is made for a refused config
    with pytest.raises(ConfigError, match="device must be cpu, cuda or cuda:N"):
        train_mod.train(tiny(model_dir, device="gpu"), str(tmp_path / "a"), progress=False)
    with pytest.raises(ConfigError, match="lora_target .* is not a regular expression"):
        train_mod.train(tiny(model_dir, lora_r=4, lora_target="[bad"), str(tmp_path / "a"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="this torch sees no GPU"):
            train_mod.train(tiny(model_dir, device="cuda"), str(tmp_path / "a"), progress=False)
    with pytest.raises(ValueError, match="has no config.json: it is not a transformers checkpoint"):
        train_mod.train(tiny(model_dir, model=str(tmp_path)), str(tmp_path / "a"), progress=False)
    assert not (tmp_path / "a").exists()  # no run folder is made for a refused config
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        train_mod.train(tiny(model_dir), str(tmp_path / "file"), progress=False)
    os.makedirs(tmp_path / "b")
    (tmp_path / "b" / "keep.txt").write_text("user data")
    for overwrite in (False, True):  # a folder that is not a run is never replaced, --overwrite or not
        with pytest.raises(ValueError, match="is not empty and is not a gvu train run .*keep.txt"):
            train_mod.train(tiny(model_dir), str(tmp_path / "b"), progress=False, overwrite=overwrite)
        assert (tmp_path / "b" / "keep.txt").read_text() == "user data"


def test_the_cli_shows_a_set_up_error_as_a_message_and_keeps_a_loop_errors_traceback(model_dir, tmp_path, gvu,
                                                                                     monkeypatch):
    cfg = {k: v for k, v in asdict(tiny(model_dir)).items() if not isinstance(v, dict)}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("user data")
    rc, _, err = gvu("train", "--config", tmp_path / "cfg.json", "--out", tmp_path / "b")  # a set-up check's ValueError
    assert rc == 2 and "gvu: error:" in err and "is not a gvu train run" in err
    assert issubclass(SetupError, ValueError)  # library callers that catch ValueError still catch it

    def broken_update(*a, **k):  # a ValueError raised by the loop is a bug: it must reach the user with its traceback
        raise ValueError("a bug inside the loop")

    monkeypatch.setattr(train_mod, "update", broken_update)
    with pytest.raises(ValueError, match="a bug inside the loop") as caught:
        gvu("train", "--config", tmp_path / "cfg.json", "--out", tmp_path / "run")
    assert not isinstance(caught.value, SetupError)
    assert (tmp_path / "run" / "config.json").exists()  # it failed after set-up, inside the loop


def test_overwrite_replaces_a_run_only_once_the_new_one_has_started(model_dir, tmp_path):
    run = tmp_path / "run"
    train_mod.train(tiny(model_dir, steps=1, eval_every=0), str(run), progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(ValueError, match="already holds a run"):
        train_mod.train(tiny(model_dir, steps=1, eval_every=0), str(run), progress=False)
    # LoRA whose target matches nothing fails after the model loads: the old run must still be whole
    with pytest.raises(ValueError, match="nomatch"):
        train_mod.train(tiny(model_dir, steps=1, eval_every=0, lora_r=2, lora_target="nomatch"), str(run),
                        progress=False, overwrite=True)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before
    train_mod.train(tiny(model_dir, steps=1, eval_every=0, lr=5e-4), str(run), progress=False, overwrite=True)
    assert json.load(open(run / "config.json"))["lr"] == 5e-4


def test_final_eval_writes_the_before_after_table_and_a_resume_keeps_the_before(model_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tiny(model_dir, steps=2, eval_every=0, checkpoint_every=1, final_eval=True, final_eval_prompts=2,
               final_images_per_prompt=1)
    summary = train_mod.train(cfg, str(run), progress=False)
    for name in ("before.json", "after.json", "summary.md", "curves.png"):
        assert (run / name).is_file(), name
    before = json.load(open(run / "before.json"))
    assert set(before) == {"eval", "ood"} and 0 <= before["eval"]["overall"] <= 1
    assert "eval" in summary["table"] and "ood" in summary["table"]
    # extended from its checkpoint: the before table is the starting model's, so it is not made again
    stamp = (run / "before.json").stat().st_mtime_ns
    train_mod.train(replace(cfg, steps=3), str(run), resume=True, progress=False)
    assert (run / "before.json").stat().st_mtime_ns == stamp
    assert json.load(open(run / "before.json")) == before


def test_files_that_appear_in_out_while_the_model_loads_are_never_deleted(model_dir, tmp_path):
    run = tmp_path / "run"
    plan = runs.check_run_dir(str(run), tiny(model_dir), resume=False, overwrite=False)
    run.mkdir()
    (run / "precious.txt").write_text("mine")  # e.g. a second `gvu train` given the same --out meanwhile
    with pytest.raises(ValueError, match="was empty when this run began"):
        runs.make_run_dir(str(run), tiny(model_dir), plan)
    assert os.listdir(run) == ["precious.txt"]


def test_a_folder_holding_the_runs_own_model_is_refused(model_dir, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(model_dir, out / "model")
    with pytest.raises(ValueError, match="holds this run's own input"):
        train_mod.train(tiny(model_dir, model=str(out / "model")), str(out), progress=False, overwrite=True)
    assert (out / "model" / "config.json").exists()
    with pytest.raises(ValueError, match="is not empty and is not a gvu train run"):  # the model folder itself
        train_mod.train(tiny(model_dir), str(out / "model"), progress=False, overwrite=True)
    assert sorted(os.listdir(out / "model")) == sorted(os.listdir(model_dir))


@pytest.mark.parametrize("field, value, words", [
    ("max_grad_norm", 0.0, "max_grad_norm must be > 0"),  # clipping to 0 would zero every gradient, unnoticed
    ("max_grad_norm", -1.0, "max_grad_norm must be > 0"),  # a negative norm flips the gradients
    ("max_grad_norm", float("nan"), "max_grad_norm must be > 0"),
    ("advantage_eps", 0.0, "advantage_eps must be > 0"),  # an all-equal group would give 0/0
    ("advantage_eps", -1e-4, "advantage_eps must be > 0"),
    ("rollout_micro_batch", 0, "rollout_micro_batch must be >= 1 or null"),
    ("threads", 0, "threads must be >= 1"),
    ("log_every", 0, "log_every must be >= 1"),
    ("eval_images_per_prompt", 0, "eval_images_per_prompt >= 1"),
    ("final_images_per_prompt", 0, "final_images_per_prompt >= 1"),
    ("final_eval_prompts", 0, "final_eval_prompts must be >= 1 or null"),
    ("guard_patience", 0, "guard_patience must be >= 1"),
])
def test_out_of_range_settings_are_refused_before_any_run_folder_exists(model_dir, tmp_path, field, value, words):
    with pytest.raises(ConfigError, match=words):
        train_mod.train(tiny(model_dir, **{field: value}), str(tmp_path / "run"), progress=False)
    assert not (tmp_path / "run").exists()
    tiny(model_dir, max_grad_norm=float("inf"), rollout_micro_batch=None, final_eval_prompts=None).validate()


def test_gradient_checkpointing_recomputes_the_layers_and_trains_the_same_weights(model_dir, tmp_path, monkeypatch):
    lm = JanusBackend.from_pretrained(model_dir).model.model.language_model
    mlp_type, layers = type(lm.layers[0].mlp), len(lm.layers)
    calls = []
    real_forward = mlp_type.forward
    monkeypatch.setattr(mlp_type, "forward", lambda self, *a, **k: calls.append(1) or real_forward(self, *a, **k))
    cfg = tiny(model_dir, steps=2, eval_every=0, grad_accum=2, beta=0.1)
    plain = weights(run_capturing_model(cfg, str(tmp_path / "plain"), monkeypatch)["model"])
    plain_calls, calls[:] = len(calls), []
    box = run_capturing_model(replace(cfg, gradient_checkpointing=True), str(tmp_path / "ckpt"), monkeypatch)
    # every layer of every update micro-batch runs once more, in backward (rollout, reward and KL reference as before)
    assert len(calls) - plain_calls == layers * 2 * 2  # layers x micro-batches x steps
    after = weights(box["model"])
    moved = [n for n in after if not torch.equal(after[n], box["before"][n])]
    assert len(moved) == len(after)
    assert all(torch.allclose(after[n], plain[n], atol=1e-6) for n in after)


def test_log_every_writes_every_kth_step_and_the_last(model_dir, tmp_path):
    run = tmp_path / "run"
    train_mod.train(tiny(model_dir, steps=5, log_every=2, eval_every=0), str(run), progress=False)
    steps = [json.loads(ln)["step"] for ln in open(run / "metrics.jsonl") if "loss/total" in json.loads(ln)]
    assert steps == [2, 4, 5]


def test_load_trained_loads_the_base_in_the_runs_dtype(model_dir, tmp_path):
    run = str(tmp_path / "run")
    train_mod.train(tiny(model_dir, steps=1, eval_every=0, dtype="bfloat16", lora_r=4), run, progress=False)
    backend = train_mod.load_trained(run)
    base = [p for n, p in backend.model.named_parameters() if "lora_" not in n]
    assert base and all(p.dtype == torch.bfloat16 for p in base)


def test_a_checkpoint_is_on_disk_before_its_rename_and_latest_after_it(tmp_path, monkeypatch):
    """Renames are atomic, but only fsync makes the renamed files' contents survive a power loss."""
    from gvu import atomic, checkpoint

    events = []
    real_replace = os.replace
    for module in (atomic, checkpoint):  # checkpoint's own calls, and fsync_folder's inside gvu.atomic
        monkeypatch.setattr(module, "fsync", lambda p: events.append(("fsync", os.path.basename(p))))
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: events.append(("fsync", "fd")))  # the open `latest` file
    monkeypatch.setattr(checkpoint.os, "replace",
                        lambda a, b: (events.append(("replace", os.path.basename(b))), real_replace(a, b)))
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    final = checkpoint.save(str(tmp_path), 3, model, opt, extra_tensors={"ema": torch.ones(2)})
    files = sorted(os.listdir(final))
    assert files == ["extra.safetensors", "manifest.json", "optimizer.safetensors", "state.json", "trainable.safetensors"]
    rename = events.index(("replace", "step_000003"))
    assert sorted(name for kind, name in events[:rename] if kind == "fsync") == sorted(files + ["step_000003.tmp"])
    assert events[rename + 1:] == [("fsync", "checkpoints"), ("fsync", "fd"), ("replace", "latest"), ("fsync", "checkpoints")]
    assert checkpoint.latest(str(tmp_path)) == final


def test_set_overrides_are_typed_and_badly_typed_values_are_clear_errors(tmp_path):
    from gvu.errors import UserError
    from gvu.model_cli import resolve_train_config

    cfg = resolve_train_config("nano", None, ["lr=3", "steps=7", "reward.judge=frozen", "final_eval_prompts=none",
                                              "model=123", "sampling.cfg_scale=2.5", "prompts_file=2024", "final_eval=no"])
    assert (cfg.lr, cfg.steps, cfg.reward.judge, cfg.final_eval_prompts, cfg.model) == (3.0, 7, "frozen", None, "123")
    assert isinstance(cfg.lr, float) and cfg.sampling.cfg_scale == 2.5
    assert cfg.prompts_file == "2024" and cfg.final_eval is False  # a str field keeps the text; none means None
    assert resolve_train_config("janus-pro-1b", None, ["prompts_file=none"]).prompts_file is None
    for bad, msg in [("lr=abc", "lr: expected float, got 'abc'"), ("steps=1.5", "steps: expected int, got 1.5"),
                     ("final_eval=maybe", "--set final_eval: expected true or false"), ("sampling=3", "'sampling' is a settings group"),
                     ("reward.nope=1", "'nope' is not a RewardConfig field"), ("lr", "expected KEY=VALUE")]:
        with pytest.raises(UserError, match=msg.replace("(", r"\(").replace(".", r"\.")):
            resolve_train_config("nano", None, [bad])
    # the same check covers config files, and a file that is not a JSON object is a clear error too
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"group_size": "eight"}))
    with pytest.raises(UserError, match="group_size: expected int"):
        resolve_train_config("nano", str(f), [])
    for text, words in (('{"lr": 1,\n "steps" 3}', r"not valid JSON \(line 2, column 10"), ("[1, 2]", "not a list")):
        f.write_text(text)
        with pytest.raises(UserError, match=words):
            resolve_train_config(None, str(f), [])
    with pytest.raises(UserError, match="is a folder"):
        resolve_train_config(None, str(tmp_path), [])


def test_resume_without_preset_or_config_takes_the_runs_own_config(tmp_path):
    from dataclasses import asdict, replace

    from gvu.cli import build_parser
    from gvu.config import TrainConfig
    from gvu.errors import UserError
    from gvu.model_cli import train_config_of
    from gvu.run_io import save_json

    saved = replace(TrainConfig(), beta=0.05, steps=5, lr=2e-6, schedule="constant",
                    reward=replace(TrainConfig().reward, judge="frozen"))
    save_json(str(tmp_path), "config.json", asdict(saved))
    parse = build_parser().parse_args
    assert train_config_of(parse(["train", "--out", str(tmp_path), "--resume"])) == saved
    # --set goes on top of the run's config (the README's way to extend a run)
    assert train_config_of(parse(["train", "--out", str(tmp_path), "--resume", "--set", "steps=9"])) == replace(saved, steps=9)
    # an explicit --preset or --config is still the base, as without --resume (check_run_dir then compares it)
    assert train_config_of(parse(["train", "--out", str(tmp_path), "--resume", "--preset", "nano"])).beta != 0.05
    # without --resume the run's config is not read
    assert train_config_of(parse(["train", "--out", str(tmp_path)])) == TrainConfig()
    with pytest.raises(UserError, match="holds no run"):
        train_config_of(parse(["train", "--out", str(tmp_path / "nothing"), "--resume"]))


@pytest.mark.parametrize("branch", ["conditional", "guided", "guided, sampled without guidance"])
def test_old_and_reference_logprobs_score_the_same_distribution_as_the_loss(model_dir, tmp_path, monkeypatch, branch):
    """mu = 2 and beta > 0: on the first inner pass of step 1 the policy is the rollout's policy and the reference,
    so old and reference log-probs must equal the loss's log-probs exactly when all three score the same branch.
    Sampled without guidance, the distribution sampling draws from is the conditional branch, whatever loss_logprobs."""
    unguided = branch.endswith("without guidance")
    sampling = SamplingConfig(guidance=False) if unguided else SamplingConfig(cfg_scale=3.0)
    seen, prompts, tokens = [], [], []
    real, real_rollout = train_mod.grpo_loss, train_mod.rollout

    def spy_rollout(model, md, *a, **k):
        ro = real_rollout(model, md, *a, **k)
        prompts.append([m["prompt"] for m in md])
        tokens.append(ro.tokens.clone())
        return ro

    def spy(logp, old, adv, mask, ref, *a):
        seen.append((logp.detach().clone(), old.clone(), ref.clone()))
        return real(logp, old, adv, mask, ref, *a)

    monkeypatch.setattr(train_mod, "grpo_loss", spy)
    monkeypatch.setattr(train_mod, "rollout", spy_rollout)
    train_mod.train(tiny(model_dir, steps=1, eval_every=0, mu=2, beta=0.1, loss_logprobs=branch.split(",")[0],
                         sampling=sampling), str(tmp_path / "run"), progress=False)
    logp, old, ref = seen[0]
    assert torch.allclose(logp, old, atol=1e-5) and torch.allclose(logp, ref, atol=1e-5)
    assert not torch.allclose(seen[1][0], old, atol=1e-4)  # the second inner pass sees the updated policy
    # ...and it is the branch asked for, at the sampling's guidance scale (3, not the backend default)
    backend = JanusBackend.from_pretrained(model_dir)
    rows = [p for p in prompts[0] for _ in range(2)]
    with torch.no_grad():
        cond = backend.image_token_logprobs(rows, tokens[0], 1.0)
        guided = backend.image_token_logprobs(rows, tokens[0], 1.0, guidance=3.0)
    want, other = (guided, cond) if branch == "guided" else (cond, guided)
    assert torch.allclose(old, want, atol=1e-5) and not torch.allclose(old, other, atol=1e-3)


def test_a_run_saved_before_newer_config_fields_still_resumes_but_a_changed_setting_is_refused(model_dir, tmp_path):
    cfg = tiny(model_dir)
    run = str(tmp_path / "old")
    runs.prepare_run_dir(run, cfg, resume=False, overwrite=False)
    saved = json.load(open(os.path.join(run, "config.json")))
    del saved["loss_logprobs"], saved["reward"]["token_weights"]  # fields that an older version did not write
    json.dump(saved, open(os.path.join(run, "config.json"), "w"))
    runs.prepare_run_dir(run, cfg, resume=True, overwrite=False)  # their defaults are what the run used
    with pytest.raises(ValueError, match="loss_logprobs"):
        runs.prepare_run_dir(run, tiny(model_dir, loss_logprobs="guided"), resume=True, overwrite=False)
    with pytest.raises(ValueError, match="'lr'"):
        runs.prepare_run_dir(run, tiny(model_dir, lr=0.5), resume=True, overwrite=False)


def test_evaluator_workers_reach_the_reward_and_do_not_block_a_resume(model_dir, tmp_path, monkeypatch):
    seen = []

    def fake(cfg, judge, pixels, metadata, evaluator_workers=0):
        seen.append(evaluator_workers)
        return RewardOutput(torch.rand(pixels.shape[0]))

    monkeypatch.setattr(train_mod, "compute_reward", fake)
    run = str(tmp_path / "run")
    train_mod.train(tiny(model_dir, steps=1, eval_every=0, evaluator_workers=3), run, progress=False)
    assert seen == [3]
    # a speed-only field: the run resumes with another value (a recipe field would be refused, as tested above)
    train_mod.train(tiny(model_dir, steps=2, eval_every=0, evaluator_workers=0), run, resume=True, progress=False)
    assert seen == [3, 0]
