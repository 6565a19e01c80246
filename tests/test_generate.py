"""`gvu generate` on the shipped nano-Janus (64 image tokens, 64 px): the layouts, resume, seeds that do not depend on
the batch size or the ranks, and bad input refused before any model loads."""

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import gvu.generate as gen
from gvu.config import SamplingConfig, TrainConfig
from gvu.layouts import auto_layout, grid_2x2, png_complete
from gvu.prompt_sources import read_source
from gvu.world.prompts import make_suite

REPO = Path(__file__).resolve().parents[1]
NANO = str(REPO / "models" / "nano-janus")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    """4 nano-world GenEval prompts of different lengths."""
    return write_jsonl(tmp_path_factory.mktemp("p") / "prompts.jsonl", make_suite("geneval", "eval", 4, seed=0))


@pytest.fixture(scope="module")
def backend():
    from gvu.models.janus import JanusBackend

    torch.set_num_threads(1)
    return JanusBackend.from_pretrained(NANO)


def generate(prompts, out, backend=None, **kw):
    """plan + run, in this process; backend: a loaded nano-Janus to reuse (loading is checked elsewhere)."""
    req = gen.plan_generation(prompts=str(prompts), out=str(out), model=NANO, device="cpu", **kw)
    return gen.run_generation(req, backend=backend, progress=False)


def png_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*.png"))}


@pytest.fixture(scope="module")
def geneval_folder(prompts, backend, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("g") / "geneval"
    generate(prompts, out, backend, batch_size=16)
    return out


# ----------------------------------------------------------------------------------------------- layouts

def test_the_geneval_layout_holds_each_prompts_metadata_line_and_four_samples(prompts, geneval_folder):
    lines = [json.loads(x) for x in prompts.read_text().splitlines()]
    assert sorted(p.name for p in geneval_folder.iterdir()) == ["00000", "00001", "00002", "00003", "generation.json"]
    for i, m in enumerate(lines):
        d = geneval_folder / f"{i:05d}"
        assert json.loads((d / "metadata.jsonl").read_text()) == m
        assert sorted(p.name for p in (d / "samples").iterdir()) == ["0000.png", "0001.png", "0002.png", "0003.png"]
        assert Image.open(d / "samples" / "0000.png").size == (64, 64)
    record = json.loads((geneval_folder / "generation.json").read_text())
    assert record["counts"] == {"prompts": 4, "requested": 4, "complete": 4, "images_per_prompt": 4, "images": 16}
    assert record["identity"]["sampling"] == asdict(SamplingConfig(seed=0))
    assert record["identity"]["model"]["model"] == os.path.realpath(NANO) and record["cfg_scale_used"] == 3.0
    assert set(record["versions"]) == {"gvu", "torch", "transformers"}


def test_the_nano_evaluator_reads_the_geneval_folder(geneval_folder, gvu, tmp_path):
    rc, out, err = gvu("eval", geneval_folder, "--out", tmp_path / "results.jsonl")
    assert rc == 0, err
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 16


def test_genevalpp_writes_index_named_images_and_a_prompts_file_whose_line_i_is_image_i(prompts, backend, tmp_path,
                                                                                           geneval_folder):
    generate(prompts, tmp_path / "pp", backend, layout="genevalpp", batch_size=3)
    names = sorted(p.name for p in (tmp_path / "pp").iterdir())
    assert names == ["0.png", "1.png", "2.png", "3.png", "generation.json", "prompts.jsonl"]
    assert (tmp_path / "pp" / "prompts.jsonl").read_text() == prompts.read_text()
    from gvu.eval.cli import pick_scorer
    assert pick_scorer(tmp_path / "pp") == "genevalpp"  # `gvu eval` reads the layout from generation.json
    # image 0 of prompt i is the same draw whatever the layout: (seed, i, k) alone
    for i in range(4):
        assert (tmp_path / "pp" / f"{i}.png").read_bytes() == \
            (geneval_folder / f"{i:05d}" / "samples" / "0000.png").read_bytes()


def test_plain_text_gets_one_image_a_line_and_its_prompts_listed_even_under_limit(backend, tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a photo of a red circle\n\na photo of a star\n")
    result = generate(txt, tmp_path / "t", backend, limit=1)
    assert result.generated == 1 and sorted(p.name for p in (tmp_path / "t").glob("*.png")) == ["0.png"]
    rows = [json.loads(x) for x in (tmp_path / "t" / "prompts.jsonl").read_text().splitlines()]
    assert rows == [{"prompt": "a photo of a red circle"}, {"prompt": "a photo of a star"}]


def test_dpg_writes_a_2x2_grid_per_item_id_whose_tile_k_is_image_k(backend, tmp_path):
    folder = tmp_path / "dpg_prompts"
    folder.mkdir()
    texts = {"10": "a photo of a red circle", "2": "a photo of two blue squares", "COCOval1": "a photo of a star"}
    for item_id, text in texts.items():
        (folder / f"{item_id}.txt").write_text(text + "\n")
    (folder / "notes.md").write_text("not a prompt")
    generate(folder, tmp_path / "dpg", backend, batch_size=5)
    out = tmp_path / "dpg"
    assert sorted(p.name for p in out.iterdir()) == ["10.png", "2.png", "COCOval1.png", "generation.json",
                                                     "prompts.jsonl"]
    rows = [json.loads(x) for x in (out / "prompts.jsonl").read_text().splitlines()]
    assert rows == [{"item_id": "2", "prompt": texts["2"]}, {"item_id": "10", "prompt": texts["10"]},
                    {"item_id": "COCOval1", "prompt": texts["COCOval1"]}]  # natural order: index 0, 1, 2
    items = read_source(folder).items
    grid = np.asarray(Image.open(out / "10.png"))
    assert grid.shape == (128, 128, 3)
    alone = gen.sample_rows(backend, [(items[1], k) for k in range(4)], SamplingConfig(seed=0))
    tiles = [grid[:64, :64], grid[:64, 64:], grid[64:, :64], grid[64:, 64:]]  # ELLA's crop order
    for k in range(4):
        assert np.array_equal(tiles[k], alone[k])
    assert not np.array_equal(tiles[0], tiles[1])


def test_grid_2x2_puts_image_k_in_tile_k_row_major():
    images = np.stack([np.full((2, 2, 3), k, dtype=np.uint8) for k in range(4)])
    assert grid_2x2(images)[:, :, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_auto_layout_follows_the_input(prompts, tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\na dog\n")
    assert [(it.index, it.prompt) for it in read_source(txt).items] == [(0, "a cat"), (1, "a dog")]
    pp = write_jsonl(tmp_path / "pp.jsonl", make_suite("genevalpp", "eval", 8, seed=0))
    dpg = tmp_path / "dpg"
    dpg.mkdir()
    (dpg / "7.txt").write_text("a dense prompt")
    cases = {prompts: "geneval", pp: "genevalpp", txt: "genevalpp", dpg: "dpg"}
    assert {p: auto_layout(read_source(p)) for p in cases} == cases


def test_the_real_benchmark_files_read_with_their_layouts(benchmarks_dir):
    cases = {"geneval/evaluation_metadata.jsonl": ("geneval", 553), "genevalpp/Geneval++.jsonl": ("genevalpp", 280),
             "flow_grpo_geneval/test_metadata.jsonl": ("geneval", 2212),
             "flow_grpo_geneval/unseen_objects_test_metadata.jsonl": ("geneval", 1024), "dpg/prompts": ("dpg", 1065)}
    for name, want in cases.items():
        source = read_source(benchmarks_dir / name)
        assert (auto_layout(source), len(source.items)) == want, name
    dpg = read_source(benchmarks_dir / "dpg" / "prompts").items
    ids = [it.item_id for it in dpg]
    numbers = [i for i in ids if i.isdigit()]
    assert ids[:len(numbers)] == sorted(numbers, key=int) and ids[len(numbers)] == "COCOval2014000000010363"


# ----------------------------------------------------------------------------------------------- seeds

def test_two_batch_sizes_write_the_same_png_bytes(prompts, backend, geneval_folder, tmp_path):
    generate(prompts, tmp_path / "b3", backend, batch_size=3)  # batches straddle prompts, unequal prompt lengths
    assert png_bytes(tmp_path / "b3") == png_bytes(geneval_folder)


def test_another_seed_draws_other_images(prompts, backend, geneval_folder, tmp_path):
    generate(prompts, tmp_path / "s1", backend, limit=1, seed=1)
    assert (tmp_path / "s1/00000/samples/0000.png").read_bytes() != \
        (geneval_folder / "00000/samples/0000.png").read_bytes()


# ----------------------------------------------------------------------------------------------- resume

def test_a_resume_redoes_only_incomplete_prompts_and_writes_the_same_images(prompts, backend, geneval_folder,
                                                                           tmp_path, monkeypatch):
    out = tmp_path / "r"
    shutil.copytree(geneval_folder, out)
    before, stamps = png_bytes(out), mtimes(out)
    (out / "00001" / "samples" / "0002.png").unlink()  # a prompt folder missing an image
    shutil.rmtree(out / "00003")  # a prompt never written
    cut = out / "00002" / "samples" / "0001.png"
    cut.write_bytes(cut.read_bytes()[:100])  # a truncated PNG (a copy cut short)
    (out / ".tmp-00003-deadbeef" / "samples").mkdir(parents=True)  # a crash's leftover
    calls = []
    real = gen.sample_rows
    monkeypatch.setattr(gen, "sample_rows", lambda b, rows, s: calls.append([(it.index, k) for it, k in rows]) or
                        real(b, rows, s))
    result = generate(prompts, out, backend, batch_size=16)
    assert (result.skipped, result.generated, result.images) == (1, 3, 12)
    assert calls == [[(i, k) for i in (1, 2, 3) for k in range(4)]]
    assert png_bytes(out) == before  # the redone prompts are the same draws
    now = mtimes(out)
    assert all(now[n] == stamps[n] for n in now if n.startswith("00000"))  # the complete prompt was not rewritten
    assert not (out / ".tmp-00003-deadbeef").exists()
    assert json.loads((out / "generation.json").read_text())["counts"]["complete"] == 4


def test_a_limited_call_then_a_full_one_generate_each_prompt_once(prompts, backend, geneval_folder, tmp_path):
    out = tmp_path / "lim"
    first = generate(prompts, out, backend, limit=2, layout="genevalpp")
    assert (first.generated, sorted(p.name for p in out.glob("*.png"))) == (2, ["0.png", "1.png"])
    stamps = mtimes(out)
    second = generate(prompts, out, backend, layout="genevalpp")
    assert (second.skipped, second.generated) == (2, 2)
    assert all(mtimes(out)[n] == t for n, t in stamps.items())
    assert (out / "3.png").read_bytes() == (geneval_folder / "00003/samples/0000.png").read_bytes()


def test_a_complete_folder_resumes_without_loading_the_model(prompts, geneval_folder, tmp_path, monkeypatch):
    out = tmp_path / "done"
    shutil.copytree(geneval_folder, out)
    monkeypatch.setattr(gen, "load_backend", lambda *a: pytest.fail("the model was loaded"))
    result = generate(prompts, out)
    assert (result.skipped, result.generated) == (4, 0)


# ----------------------------------------------------------------------------------------------- bad input

@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the errors below must come first."""
    monkeypatch.setattr(gen, "load_backend", lambda *a: pytest.fail("the model was loaded before the error"))
    monkeypatch.setattr("gvu.models.janus.JanusBackend.from_pretrained",
                        lambda *a, **k: pytest.fail("the model was loaded before the error"))


def test_bad_input_is_a_clear_error_before_any_model_loads(prompts, tmp_path, gvu, no_model):
    def err(*args):
        rc, _, e = gvu("generate", "--model", NANO, "--out", tmp_path / "o", *args)
        assert rc == 2, e
        return e

    assert "invalid choice: 'coco'" in err("--prompts", prompts, "--layout", "coco")
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a cat"}])
    assert f"{bad}:1: missing or non-string 'tag'" in err("--prompts", bad)
    looks = tmp_path / "p.txt"
    looks.write_text(prompts.read_text())
    assert "looks like JSON lines" in err("--prompts", looks)
    (tmp_path / "empty.txt").write_text("\n\n")
    assert "no prompts (the file is empty)" in err("--prompts", tmp_path / "empty.txt")
    (tmp_path / "nodir").mkdir()
    assert "without <item_id>.txt prompt files" in err("--prompts", tmp_path / "nodir")
    assert "no such file or folder" in err("--prompts", tmp_path / "missing.jsonl")
    (tmp_path / "plain.txt").write_text("a cat\n")
    assert "the geneval layout writes each prompt's GenEval metadata" in err("--prompts", tmp_path / "plain.txt",
                                                                             "--layout", "geneval")
    assert "--images-per-prompt must be 1" in err("--prompts", prompts, "--layout", "genevalpp",
                                                  "--images-per-prompt", "4")
    assert "--images-per-prompt must be 4" in err("--prompts", prompts, "--layout", "dpg", "--images-per-prompt", "2")
    assert "top_p must be in (0, 1]" in err("--prompts", prompts, "--set", "sampling.top_p=2")
    assert "expected sampling.FIELD=VALUE" in err("--prompts", prompts, "--set", "lr=1")
    assert "unknown sampling setting 'topk'" in err("--prompts", prompts, "--set", "sampling.topk=3")
    assert "give the seed with --seed" in err("--prompts", prompts, "--set", "sampling.seed=3")
    assert "--step goes with --run" in err("--prompts", prompts, "--step", "3")
    assert "--batch-size must be at least 1" in err("--prompts", prompts, "--batch-size", "0")
    assert "not a directory" in err("--prompts", prompts, "--model", tmp_path / "nothing")
    assert not (tmp_path / "o").exists()


def test_a_folder_of_another_model_or_other_settings_is_refused_unless_overwrite(prompts, geneval_folder, tmp_path,
                                                                                 gvu, no_model):
    from gvu.models.nano import SPECS, build_random
    from gvu.models.pretrain import save_model

    other = tmp_path / "other_model"
    save_model(*build_random("smoke", seed=0), SPECS["smoke"], str(other))
    out = tmp_path / "half"
    shutil.copytree(geneval_folder, out)
    shutil.rmtree(out / "00003")  # half written by nano-Janus
    before = png_bytes(out)
    rc, _, e = gvu("generate", "--model", other, "--prompts", prompts, "--out", out)
    assert rc == 2 and "holds a generation by another model or with other settings (model:" in e
    assert "pass --overwrite" in e
    rc, _, e = gvu("generate", "--model", NANO, "--prompts", prompts, "--out", out, "--set", "sampling.temperature=0.5")
    assert rc == 2 and "sampling:" in e and '"temperature": 1.0' in e
    rc, _, e = gvu("generate", "--model", NANO, "--prompts", prompts, "--out", out, "--layout", "genevalpp")
    assert rc == 2 and "layout:" in e
    assert png_bytes(out) == before
    # under --overwrite the checks pass (the model would load next)
    req = gen.plan_generation(prompts=str(prompts), out=str(out), model=str(other), device="cpu", overwrite=True)
    assert gen.folder_plan(req) == "replace"


def test_a_folder_with_files_gvu_did_not_write_is_never_replaced(prompts, tmp_path, gvu, no_model):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("user data")
    for extra in ((), ("--overwrite",)):
        rc, _, e = gvu("generate", "--model", NANO, "--prompts", prompts, "--out", out, *extra)
        assert rc == 2 and "does not write (notes.txt)" in e
    assert (out / "notes.txt").read_text() == "user data"


def fake_run(tmp_path: Path, steps: tuple[int, ...]) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = TrainConfig(model=NANO, sampling=SamplingConfig(temperature=0.9, min_p=0.03, guidance=False))
    (run / "config.json").write_text(json.dumps(asdict(cfg)))
    for s in steps:
        (run / "checkpoints" / f"step_{s:06d}").mkdir()
    (run / "checkpoints" / "step_000009.tmp").mkdir()  # a save cut short is not a checkpoint
    return run


def test_a_step_the_run_does_not_have_is_refused_with_the_steps_it_has(prompts, tmp_path, gvu, no_model):
    run = fake_run(tmp_path, (2, 4))
    rc, _, e = gvu("generate", "--run", run, "--step", "3", "--prompts", prompts, "--out", tmp_path / "o")
    assert rc == 2 and "--step 3: run" in e and "checkpoints are at steps 2, 4" in e
    rc, _, e = gvu("generate", "--run", tmp_path, "--prompts", prompts, "--out", tmp_path / "o")
    assert rc == 2 and "holds no run (no config.json)" in e
    empty = fake_run(tmp_path / "e", ())
    rc, _, e = gvu("generate", "--run", empty, "--prompts", prompts, "--out", tmp_path / "o")
    assert rc == 2 and "has no checkpoint yet" in e


def test_a_run_samples_with_its_own_settings_unless_set(prompts, tmp_path, no_model):
    run = fake_run(tmp_path, (2, 4))
    req = gen.plan_generation(prompts=str(prompts), out=str(tmp_path / "o"), run=str(run), device="cpu", seed=5)
    assert req.model.step == 4 and req.sampling == SamplingConfig(temperature=0.9, min_p=0.03, guidance=False, seed=5)
    req = gen.plan_generation(prompts=str(prompts), out=str(tmp_path / "o"), run=str(run), step=2, device="cpu",
                              sets=["sampling.min_p=0", "sampling.guidance=true", "sampling.cfg_scale=4"])
    assert req.model.step == 2 and req.sampling == SamplingConfig(temperature=0.9, min_p=0.0, cfg_scale=4.0)


def test_png_complete_needs_the_iend_chunk(geneval_folder, tmp_path):
    png = geneval_folder / "00000" / "samples" / "0000.png"
    assert png_complete(png)
    cut = tmp_path / "cut.png"
    cut.write_bytes(png.read_bytes()[:-1])
    assert not png_complete(cut) and not png_complete(tmp_path / "absent.png")


# ----------------------------------------------------------------------------------------------- two ranks

@pytest.mark.slow
def test_two_gloo_ranks_write_the_same_png_bytes_as_one_process(prompts, geneval_folder, tmp_path):
    out = tmp_path / "ranks"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gvu",
           "generate", "--model", NANO, "--prompts", str(prompts), "--out", str(out), "--batch-size", "3",
           "--device", "cpu", "--threads", "1"]
    logs = []
    for _ in range(2):  # one retry: a rendezvous or socket hiccup of the launcher is not what this test checks
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        logs.append(proc.stdout[-2000:] + proc.stderr[-4000:])
        if proc.returncode == 0:
            break
    assert proc.returncode == 0, "\n----- retry -----\n".join(logs)
    assert png_bytes(out) == png_bytes(geneval_folder)
    record = json.loads((out / "generation.json").read_text())
    assert record["world_size"] == 2 and record["counts"]["complete"] == 4


# ----------------------------------------------------------------------------------------------- bench

def eval_takes_scorer() -> bool:
    from gvu.cli import build_parser

    try:
        build_parser().parse_args(["eval", "folder", "--scorer", "nano"])
    except SystemExit:
        return False
    return True


def test_bench_generates_then_scores_through_gvu_eval_and_resumes(prompts, tmp_path, gvu, monkeypatch):
    import gvu.generate_cli as gcli

    built = []
    real_argv = gcli.eval_argv

    def argv(*a):
        out = real_argv(*a)
        built.append(out)
        if not eval_takes_scorer():  # the nano eval before `gvu eval --scorer` exists: the same command without it
            i = out.index("--scorer")
            out = out[:i] + out[i + 2:]
        return out

    monkeypatch.setattr(gcli, "eval_argv", argv)
    out = tmp_path / "bench"
    args = ("bench", "geneval", "--model", NANO, "--prompts", prompts, "--out", out, "--limit", "2", "--device", "cpu",
            "--scorer-args", "--image-size", "64")
    rc, stdout, err = gvu(*args)
    assert rc == 0, err
    assert built[0] == ["eval", str(out / "images"), "--scorer", "nano", "--out", str(out / "scores/results.jsonl"),
                        "--overwrite", "--image-size", "64"]  # nano-world prompts: the nano world's exact evaluator
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000", "00001", "generation.json"]
    assert len((out / "scores/results.jsonl").read_text().splitlines()) == 8
    summary = json.loads((out / "scores/summary.json").read_text())
    stamps = mtimes(out / "images")
    monkeypatch.setattr(gen, "load_backend", lambda *a: pytest.fail("a complete bench regenerated"))
    rc, _, err = gvu(*args)
    assert rc == 0, err
    assert mtimes(out / "images") == stamps and json.loads((out / "scores/summary.json").read_text()) == summary


def test_bench_keeps_a_benchmark_scorers_results_folder_and_cache():
    import gvu.generate_cli as gcli

    assert gcli.eval_argv(Path("b/images"), Path("b/scores"), "geneval", ["--detector", "d"]) == \
        ["eval", "b/images", "--scorer", "geneval", "--out", "b/scores", "--detector", "d"]


def test_bench_passes_its_scorer_options_on_to_gvu_eval():
    import gvu.generate_cli as gcli
    from gvu.cli import build_parser

    args = build_parser().parse_args(["bench", "dpg", "--model", NANO, "--prompts", "p", "--out", "o", "--judge",
                                      "local:/j", "--questions", "q.csv", "--judge-batch", "2", "--dry-run"])
    assert gcli.forwarded_options(args) == ["--judge", "local:/j", "--questions", "q.csv", "--judge-batch", "2",
                                            "--dry-run"]


def test_bench_refuses_a_bad_scorer_option_before_generating(prompts, tmp_path, gvu, no_model):
    rc, _, err = gvu("bench", "geneval", "--model", NANO, "--prompts", prompts, "--out", tmp_path / "b",
                     "--scorer-args", "--no-such-option")
    assert rc == 2 and "--no-such-option" in err and not (tmp_path / "b").exists()


def test_bench_genevalpp_generates_then_a_judge_scores_each_image_once(tmp_path, gvu, monkeypatch):
    """nano-Janus on 2 GenEval++ prompts, judged by a scripted OpenAI-compatible server on 127.0.0.1."""
    from gvu.eval.fake_server import FakeChatServer, FakeReply, user_text

    rows = make_suite("genevalpp", "eval", 2, seed=0)
    prompts = write_jsonl(tmp_path / "pp.jsonl", rows)
    verdict = {rows[0]["prompt"]: '{"correct": 1, "reason": "ok"}', rows[1]["prompt"]: '{"correct": 0, "reason": "no"}'}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    out = tmp_path / "bench"
    args = ("bench", "genevalpp", "--model", NANO, "--prompts", prompts, "--out", out, "--device", "cpu",
            "--judge", "openai:fake-vlm")
    with FakeChatServer(lambda payload, seen: FakeReply(verdict[user_text(payload).split("\n")[1]])) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        rc, _, err = gvu(*args)
        assert rc == 0, err
        assert server.count == 2
        rc, _, err = gvu(*args)  # resumes: no image is generated or judged again
        assert rc == 0, err
        assert server.count == 2
    assert sorted(p.name for p in (out / "images").glob("*.png")) == ["0.png", "1.png"]
    result = json.loads((out / "scores" / "genevalpp_results.json").read_text())
    tags = [r["tag"] for r in rows]
    assert result["tag_accuracy"] == {tags[0]: 1.0, tags[1]: 0.0} and result["overall"] == 0.5  # mean of the tags
