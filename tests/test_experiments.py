"""Helpers of the experiment scripts and the plumbing they share in gvu/: deadline_compare's step bookkeeping (which
checkpoint every run is evaluated at), gvu.compare's evaluation under another guidance (compare_rewards),
compare_gpu.sh's CUDA check, and vq_draw's settings and report."""

import json
import os
from types import SimpleNamespace

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def dc():
    from experiments import deadline_compare

    return deadline_compare


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


def test_deadline_compare_evaluation_jobs_rerun_this_module_with_what_run_row_reads(dc, tmp_path, monkeypatch):
    from gvu.compare import cfg_suffix, row_config

    args = args_for(tmp_path)
    # every field gvu.compare reads of the comparison's arguments is there (eval_cfg: no other guidance)
    assert cfg_suffix(dc.compare_args(args)) == ""
    assert row_config("gvu_policy", 1, dc.compare_args(args)).seed == 1
    started = []
    monkeypatch.setattr(dc, "spawn", lambda cmd, log: started.append(cmd))
    dc.eval_job(args, "oracle", 0, 250)
    assert started[0][1:7] == ["-m", "experiments.deadline_compare", "--_eval", "oracle", "0", "250"]


# ------------------------------------------------------------------------ gvu/compare.py, experiments/compare_rewards.py

def test_compare_rewards_eval_cfg_changes_only_the_evaluations_guidance_and_caches_apart(tmp_path, monkeypatch):
    import gvu.compare as cr
    import gvu.train
    seen = {}
    def train(cfg, out, **kw):
        seen["train"] = cfg.sampling.cfg_scale
        os.makedirs(out)
    monkeypatch.setattr(gvu.train, "train", train)
    monkeypatch.setattr(gvu.train, "load_trained", lambda out, step=None: "policy")

    def tables(backend, cfg):
        seen.setdefault("eval", []).append(cfg.sampling.cfg_scale)
        split = {"overall": 0.25, "reward": 0.4, "per_tag": {"colors": 0.5}}
        return {"eval": split, "ood": dict(split, overall=0.05)}
    monkeypatch.setattr(gvu.train, "final_tables", tables)
    monkeypatch.setattr(cr, "understanding", lambda backend, n: 0.79)
    args = SimpleNamespace(out=str(tmp_path), set=["sampling.cfg_scale=1.01"], eval_cfg=3.0, steps=150, extend=None,
                           model="models/nano-janus", threads=1, eval_prompts=None, understanding_prompts=8)
    res = cr.run_row("gvu_policy", 0, args)
    # trained without guidance, evaluated with guidance 3, and kept apart from the run's own evaluation
    assert seen == {"train": 1.01, "eval": [3.0]}
    assert res["eval"] == 0.25 and res["ood"] == 0.05 and res["understanding"] == 0.79
    assert os.listdir(tmp_path / "gvu_policy-s0") == ["result-cfg3.json"]
    assert cr.run_row("gvu_policy", 0, args) == res and seen["eval"] == [3.0]  # cached: not evaluated again


def test_compare_rewards_extend_keeps_every_result_of_the_shorter_run_as_a_result_at_its_step(tmp_path):
    import gvu.compare as cr

    src = tmp_path / "short" / "gvu_policy-s0"
    os.makedirs(src)
    (src / "config.json").write_text(json.dumps({"steps": 150}))
    for name in ("result.json", "result-cfg3.json", "result-step100.json", "result-step100-cfg3.json"):
        (src / name).write_text(json.dumps({"name": name}))
    out = tmp_path / "long" / "gvu_policy-s0"
    os.makedirs(out.parent)
    cr.extend_from(str(src), str(out), SimpleNamespace(steps=300))
    moved = {n: json.loads((out / n).read_text())["name"] for n in os.listdir(out) if n.startswith("result")}
    # the 150-step evaluations (with the run's guidance and with --eval-cfg 3) become step-150 results: none of them
    # may pass for the 300-step run's own result
    assert moved == {"result-step150.json": "result.json", "result-step150-cfg3.json": "result-cfg3.json",
                     "result-step100.json": "result-step100.json", "result-step100-cfg3.json": "result-step100-cfg3.json"}


@pytest.mark.parametrize("sets, words", [
    (["sampling.cfg_scale=3"], "cfg_scale is 3.0 but guidance is off"),  # the preset samples without guidance
    (["sampling.bogus=1"], "'bogus' is not a SamplingConfig field"),
    (["--model", "{tmp}"], "has no config.json"),  # a folder that is not a model
    (["--rows", "base,gvu_policy", "--extend", "{tmp}/nowhere", "--model", "{shipped}"],
     "nowhere/gvu_policy-s0 holds no run"),  # found before base's evaluation
])
def test_compare_rewards_refuses_a_bad_set_before_any_work(tmp_path, monkeypatch, capsys, sets, words):
    from experiments import compare_rewards as cr

    out = tmp_path / "out"
    if sets[0].startswith("--"):  # other flags, as given
        shipped = os.path.join(HERE, "..", "models", "nano-janus")
        extra = [a.replace("{tmp}", str(tmp_path)).replace("{shipped}", shipped) for a in sets]
        extra = extra if "--rows" in extra else ["--rows", "base", *extra]
    else:
        extra = ["--rows", "base"] + [a for s in sets for a in ("--set", s)]
    argv = ["compare_rewards.py", "--out", str(out), *extra]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit):
        cr.main()
    assert words in capsys.readouterr().err and not out.exists()


# ---------------------------------------------------------------------------------------------- experiments/vq_draw.py

@pytest.fixture(scope="module")
def vqd():
    from experiments import vq_draw

    return vq_draw


def test_vq_draw_resolve_applies_sets_and_registers_a_spec(vqd):
    from gvu.models import nano
    from gvu.models.pretrain import PRESETS

    cfg = vqd.resolve("smoke", 3, threads=1, sets=["vq_steps=7", "device=cuda"],
                      specs=["vq_base_channels=64", "vq_channel_multiplier=[1, 2, 2, 2]"])
    assert (cfg.seed, cfg.threads, cfg.vq_steps, cfg.device) == (3, 1, 7, "cuda")
    assert cfg.dec_steps == PRESETS["smoke"].dec_steps  # untouched fields keep the preset's values
    spec, base = nano.SPECS[cfg.spec], nano.SPECS["smoke"]
    assert cfg.spec.startswith("smoke+") and "vq_base_channels=64" in cfg.spec
    assert spec.vq_base_channels == 64 and spec.vq_channel_multiplier == (1, 2, 2, 2)  # a JSON list becomes a tuple
    assert (spec.text_hidden, spec.vq_codebook) == (base.text_hidden, base.vq_codebook)
    assert base.vq_base_channels == 32  # the preset's own spec is not changed


@pytest.mark.parametrize("kw, words", [({"sets": ["vq_stepz=3"]}, "'vq_stepz' is not a PretrainConfig field"),
                                       ({"specs": ["vq_base_channels"]}, "no value"),
                                       ({"specs": ["text_hiden=8"]}, "'text_hiden' is not a NanoSpec field")])
def test_vq_draw_resolve_rejects_bad_fields(vqd, kw, words):
    with pytest.raises(ValueError, match=words):
        vqd.resolve("smoke", 0, **kw)
    with pytest.raises(ValueError, match="unknown preset 'nanoo'"):
        vqd.resolve("nanoo", 0)


def test_vq_draw_report_lists_finished_and_unfinished_runs(vqd, tmp_path, capsys):
    os.makedirs(tmp_path / "a-s0")
    with open(tmp_path / "a-s0" / "vq_draw.json", "w") as f:
        json.dump({"vq_after_stage1": 0.9804, "vq_after_stage1c": 0.98623, "per_tag_after_stage1c": {"counting": 0.95},
                   "stage1_minutes": 5.7, "stage1c_minutes": 0.8}, f)
    os.makedirs(tmp_path / "b-s1")  # started, not finished
    (tmp_path / "b-s1.log").write_text("")  # a log file beside the folders is not a run
    vqd.report(str(tmp_path))
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    assert rows == ["| a-s0 | 0.980 | 0.986 | 0.950 | 5.7 | 0.8 |", "| b-s1 | not finished | | | | |"]


def test_vq_draw_curve_averages_each_runs_logged_mse_over_the_last_100_steps(vqd, tmp_path, capsys):
    import gzip

    os.makedirs(tmp_path / "a")
    with open(tmp_path / "a" / "log.jsonl", "w") as f:  # steps 20..200; stage-2 and other records are skipped
        for step in range(20, 201, 20):
            f.write(json.dumps({"stage": 1, "step": step, "vq/mse": step / 1000}) + "\n")
        f.write(json.dumps({"stage": 2, "step": 200, "loss": 9.0}) + "\n")
    os.makedirs(tmp_path / "b")
    with gzip.open(tmp_path / "b" / "log.jsonl.gz", "wt") as f:  # a committed, gzipped log that stops at step 100
        f.write(json.dumps({"stage": 1, "step": 100, "vq/mse": 0.5}) + "\n")
    vqd.curve([str(tmp_path / "a"), str(tmp_path / "b")], steps=(100, 200, 300))
    rows = capsys.readouterr().out.strip().splitlines()
    # step 100: (0.02 + 0.04 + 0.06 + 0.08 + 0.10) / 5 = 0.06; step 200: (0.12 + ... + 0.20) / 5 = 0.16; no row at 300
    assert rows == ["| step | a | b |", "|---:|---:|---:|", "| 100 | 0.0600 | 0.5000 |", "| 200 | 0.1600 |  |"]
    with pytest.raises(ValueError, match="no log.jsonl"):
        vqd.curve([str(tmp_path)])


# ---------------------------------------------------------------------------------------------- benchmarks/evaluator_change.py

@pytest.mark.skipif(not os.path.exists(os.path.join(HERE, "..", ".git")), reason="needs a git checkout (git show)")
def test_evaluator_change_loads_the_evaluator_of_a_revision_and_refuses_an_unknown_one():
    from benchmarks import evaluator_change as mod
    from gvu.world.evaluator import evaluate_image
    from gvu.world.scene import Obj, Scene, render

    then = mod.evaluator_at("HEAD")
    assert then.__name__ == "evaluator_then" and then.evaluate_image is not evaluate_image  # its own module
    md = {"tag": "single_object", "include": [{"class": "star", "count": 1}], "prompt": "a photo of a star"}
    img = render(Scene((Obj("star", "red", "large", 30, 30),)))
    assert then.evaluate_image(md, img).correct and evaluate_image(md, img).correct
    with pytest.raises(ValueError, match="--against no-such-rev"):
        mod.evaluator_at("no-such-rev")


# ------------------------------------------------------------ gvu/measure.py, nano_eval.py, experiments/understanding_finetune.py

def test_roc_auc_counts_pairs_by_hand():
    from gvu.measure import auc

    # positives 3, 1 against negatives 2, 1: pairs (3>2, 3>1, 1<2, 1=1) -> (1 + 1 + 0 + 0.5) / 4
    assert auc([3.0, 1.0, 2.0, 1.0], [True, True, False, False]) == pytest.approx(0.625)
    assert auc([5.0, 1.0, 2.0], [True, False, False]) == 1.0
    assert auc([5.0, 1.0], [True, True]) is None  # no negatives: no pair to count


def test_summarise_weighs_every_tag_the_same_in_overall_and_every_image_in_pooled():
    from gvu.measure import summarise

    s = summarise({"colors": [True, False, False, False], "counting": [True, True]})
    # per tag 1/4 and 2/2 -> overall (0.25 + 1) / 2 = 0.625; pooled 3 of 6 images = 0.5
    assert s == {"per_tag": {"colors": 0.25, "counting": 1.0}, "overall": 0.625, "pooled": 0.5, "n": 6}


def test_understanding_finetune_rows_are_what_each_kind_says():
    import random

    from gvu.world.captions import REWARD_QUERY

    from experiments import understanding_finetune as uf

    rng = random.Random(4)
    for kind in ("position", "balanced_position"):
        for _ in range(20):
            query, text, scene = uf.make_row(kind, rng)
            assert query == REWARD_QUERY and len(scene.objects) == 2
            assert any(f" {r} " in text for r in ("left of", "right of", "above", "below"))
    query, text, _ = uf.make_row("captions", rng)
    assert query == REWARD_QUERY and text
    query, answer, _ = uf.make_row("questions", rng)
    assert query != REWARD_QUERY and query.endswith("?") and " " not in answer.strip()


def test_understanding_finetune_saves_a_model_that_loads_as_its_source_does(tmp_path):
    import torch

    from gvu.models.janus import JanusBackend

    from experiments import understanding_finetune as uf

    src = os.path.join(HERE, "..", "models", "nano-janus")
    b = JanusBackend.from_pretrained(src)
    with torch.no_grad():
        b.model.model.aligner.fc1.weight.add_(1.0)  # a fine-tuned weight
    uf.save_like(src, b.model, str(tmp_path / "ft"))
    assert sorted(os.listdir(src)) == sorted(os.listdir(tmp_path / "ft"))  # tokenizer, processor, backend settings
    back = JanusBackend.from_pretrained(str(tmp_path / "ft"))
    assert torch.equal(back.model.model.aligner.fc1.weight, b.model.model.aligner.fc1.weight)
    assert back.num_image_tokens == b.num_image_tokens
    with pytest.raises(SystemExit, match="give another directory"):
        uf.save_like(str(tmp_path / "ft"), b.model, str(tmp_path / "ft"))


def test_nano_model_eval_majority_share_is_the_accuracy_of_always_giving_the_commonest_answer():
    from benchmarks import nano_model_eval as mod

    assert mod.majority_share(["zero", "two", "zero", "three"]) == 0.5  # "zero" 2 of 4
    assert mod.majority_share(["yes", "no", "no"]) == pytest.approx(2 / 3)


def test_nano_eval_draws_eval_scenes_without_held_out_pairs_unless_asked():
    import gvu.nano_eval as mod
    from gvu.world.scene import Obj, Scene

    red, green = Obj("triangle", "red", "small", 20.0, 20.0), Obj("triangle", "green", "small", 44.0, 44.0)
    assert not mod.holds_held_out_pair(Scene((red,)))
    assert mod.holds_held_out_pair(Scene((red, green)))  # ("green", "triangle") is held out
    # the benchmark's eval scenes, drawn as the world renders eval images: no scene holds a held-out pair
    pairs = mod.eval_scenes(None, seed=99)
    assert len(pairs) == 553 and not any(mod.holds_held_out_pair(sc) for _, sc in pairs)
    # held_out_colours=True (compare_rewards' understanding column): no prompt names one, yet some scenes hold one in
    # an open colour
    old = mod.eval_scenes(None, seed=99, held_out_colours=True)
    flagged = [m["prompt"] for m, sc in old if mod.holds_held_out_pair(sc)]
    assert 0 < len(flagged) < len(old) / 2
    assert [m["prompt"] for m, _ in old] == [m["prompt"] for m, _ in pairs]  # the same prompts
    assert all(" green triangle" not in p and " black triangle" not in p for p in flagged)


# ---------------------------------------------------------------------------------------- experiments/caption_leak.py

def test_caption_leak_replays_the_very_understanding_rows_of_stage2_and_counts_eval_texts():
    import random
    from dataclasses import replace

    from gvu.models import nano
    from gvu.models.pretrain import PRESETS, Stage2Data

    from experiments import caption_leak as cl

    spec = nano.SPECS["smoke"]
    tok = nano.build_tokenizer(spec, nano.corpus(n_scenes=200, seed=0))
    cfg = replace(PRESETS["smoke"], lm_steps=3, s3_steps=2)
    seen, _ = cl.replay(cfg, tok, spec)
    # the same answers as the rows Stage2Data.step makes (with pixels), steps 0-2 of stage 2 and 0-1 of stage 3
    expected = []
    for steps, base, recon in ((3, 3, 0.0), (2, 7, cfg.und_recon)):
        data = Stage2Data(tok, spec, cfg, random.Random(), recon=recon, seed_base=base)
        for k in range(steps):
            batch = data.step(k)
            for ids, labels in zip(batch["und"].ids, batch["labels"]):
                answer = ids[labels != -100].tolist()[:-1]  # the answer without its end token
                expected.append(tok.decode(answer).strip())
    assert sorted(seen.elements()) == sorted(expected)
    # many steps: eval-split texts are read unless caption_train_only keeps them out
    for flag in (False, True):
        seen, made = cl.replay(replace(cfg, lm_steps=400, caption_train_only=flag), tok, spec, limit=250)
        read = sum(n for t, n in seen.items() if made.get(t) in ("eval", "ood"))
        assert (read > 0) != flag
    assert made and all(s in ("train", "train+eval") for t, s in made.items() if seen[t])


def test_compare_gpu_stops_at_its_cuda_check_before_any_row_starts(tmp_path):
    """experiments/compare_gpu.sh checks the CUDA path with a 2-step run first: without a GPU it stops there, with
    the check's own error, and no row's process is started; without its arguments it prints its usage."""
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("checks the failure on a machine without a GPU")
    script = os.path.join(HERE, "..", "experiments", "compare_gpu.sh")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    usage = subprocess.run(["bash", script], capture_output=True, text=True, env=env)
    assert usage.returncode != 0 and "usage: bash experiments/compare_gpu.sh OUT ROWS SEEDS SECONDS" in usage.stderr
    out = tmp_path / "cmp"
    r = subprocess.run(["bash", script, str(out), "base,gvu_policy", "0", "60", "--steps", "4"], cwd=os.path.join(HERE, ".."),
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1
    assert "the CUDA check failed" in r.stdout and "this torch sees no GPU" in r.stdout
    assert sorted(os.listdir(out)) == ["cuda-check.log"]  # no row's log, no row's folder


def test_stage_times_reads_one_stages_logged_times_from_the_run_folder(tmp_path):
    from gvu.models.stage_timing import stage_times

    records = [{"stage": 1, "step": 20, "time": 5.0}, {"stage": "1b", "step": 20, "time": 2.5},
               {"stage": 2, "step": 20, "time": 8.0}, {"stage": 2, "step": 40, "time": 14.0},
               {"stage": 2, "event": "saved"}]  # a record without a time is not a timing
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert stage_times(str(tmp_path), 2) == [8.0, 14.0]  # (14 - 8) / 20 = 0.3 s a step
    assert stage_times(str(tmp_path), "1b") == [2.5] and stage_times(str(tmp_path), "1") == [5.0]
    assert stage_times(str(tmp_path), 3) == []
