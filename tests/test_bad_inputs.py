"""Bad inputs through the real `gvu` command: each is refused with exit status 2 and one `gvu: error:` line (no
traceback), before any model loads, and no input file is changed.

Each case runs `gvu.cli.main(argv)` in a process of its own, as `python -m gvu.cli ARGS` does, forked from a server
process that has imported gvu, torch and transformers once (FORK_SERVER): a fresh interpreter per case would spend
90 x 2-4 s importing them. A few cases also run as real `python -m gvu.cli` subprocesses, to test the entry point
itself. The table is CASES below. Run:
    OMP_NUM_THREADS=1 python -m pytest -q tests/test_bad_inputs.py
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from gvu.cli import main as gvu_main
from gvu.models.nano import SPECS, build_random
from gvu.models.pretrain import save_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}

# (id, arguments, words the error line holds). "{in}" is the inputs folder (hashed before and after), "{out}" a
# scratch folder for outputs that should never be made.
NANO = ["train", "--preset", "nano", "--out", "{out}/run"]
SCORE = ["score", "--image", "{in}/img.png", "--prompt", "a red circle"]
CASES = [
    # --- train: settings (refused before torch is imported)
    ("cfg_scale_nan", NANO + ["--set", "sampling.cfg_scale=NaN"], "sampling.cfg_scale must be a finite number"),
    ("temperature_nan", NANO + ["--set", "sampling.temperature=NaN"], "sampling.temperature must be a finite number"),
    ("lr_inf", NANO + ["--set", "lr=1e999"], "lr must be a finite number"),
    ("lr_zero", NANO + ["--set", "lr=0"], "lr must be > 0"),
    ("lr_text", NANO + ["--set", "lr=fast"], "expected float"),
    ("lora_alpha_zero", NANO + ["--set", "lora_r=4", "--set", "lora_alpha=0"], "lora_alpha must be > 0"),
    ("seed_huge", NANO + ["--set", "seed=4294967296"], "seed must be in 0..4294967295"),
    ("seed_negative", NANO + ["--set", "seed=-1"], "seed must be in 0..4294967295"),
    ("sampling_seed_huge", NANO + ["--set", "sampling.seed=99999999999999"], "sampling.seed must be in 0..4294967295"),
    ("warmup_negative", NANO + ["--set", "warmup_steps=-1"], "warmup_steps must be >= 0"),
    ("weight_decay_negative", NANO + ["--set", "weight_decay=-0.1"], "weight_decay must be >= 0"),
    ("weight_decay_nan", NANO + ["--set", "weight_decay=NaN"], "weight_decay must be a finite number"),
    ("train_prompts_huge", NANO + ["--set", "train_prompts=100000000"], "train_prompts must be in 1..100,000"),
    ("group_size_one", NANO + ["--set", "group_size=1"], "group_size must be >= 2"),
    ("top_p_zero", NANO + ["--set", "sampling.top_p=0"], "top_p must be in (0, 1]"),
    ("min_p_one", NANO + ["--set", "sampling.min_p=1"], "min_p must be in [0, 1)"),
    ("judge_unknown", NANO + ["--set", "reward.judge=teacher"], "judge must be one of"),
    ("ema_decay_nan", NANO + ["--set", "reward.ema_decay=NaN"], "reward.ema_decay must be a finite number"),
    ("beta_negative", NANO + ["--set", "beta=-1"], "beta must be >= 0"),
    ("max_grad_norm_zero", NANO + ["--set", "max_grad_norm=0"], "max_grad_norm must be > 0"),
    ("steps_float", NANO + ["--set", "steps=1.5"], "expected int"),
    ("bool_text", NANO + ["--set", "final_eval=maybe"], "expected true or false"),
    ("unknown_setting", NANO + ["--set", "speed=11"], "'speed' is not a TrainConfig field"),
    ("set_without_value", NANO + ["--set", "lr"], "expected KEY=VALUE"),
    ("set_group_as_value", NANO + ["--set", "sampling=3"], "is a settings group"),
    ("set_deep_json", NANO + ["--set", "lr=" + "[" * 5000], "nests JSON too deeply"),
    ("device_unknown", NANO + ["--set", "device=gpu"], "device must be cpu, cuda or cuda:N"),
    ("dtype_unknown", NANO + ["--set", "dtype=float16"], "dtype must be one of ('float32', 'bfloat16', 'auto') (got 'float16')"),
    ("schedule_unknown", NANO + ["--set", "schedule=linear"], "schedule must be constant or cosine"),
    ("lora_target_bad_regex", NANO + ["--set", "lora_r=4", "--set", "lora_target=[bad"], "not a regular expression"),
    ("preset_unknown", ["train", "--preset", "nope", "--out", "{out}/run"], "no such file"),
    ("config_binary", ["train", "--config", "{in}/binary.json", "--out", "{out}/run"], "is not a text file"),
    ("config_deep", ["train", "--config", "{in}/deep.json", "--out", "{out}/run"], "nests JSON too deeply"),
    ("config_list", ["train", "--config", "{in}/list.json", "--out", "{out}/run"], "must hold a JSON object"),
    ("config_broken", ["train", "--config", "{in}/broken.json", "--out", "{out}/run"], "is not valid JSON"),
    ("config_missing", ["train", "--config", "{in}/none.json", "--out", "{out}/run"], "no such file"),
    ("config_folder", ["train", "--config", "{in}", "--out", "{out}/run"], "is a folder"),
    ("model_missing", NANO + ["--set", "model={in}/none"], "is not a directory"),
    ("resume_from_without_resume", NANO + ["--resume-from", "3"], "go with --resume"),
    ("trust_without_resume", NANO + ["--trust-checkpoint-pickle"], "go with --resume"),
    ("resume_and_overwrite", NANO + ["--resume", "--overwrite"], "give one of them"),
    ("resume_from_zero", ["train", "--out", "{in}/run", "--resume", "--resume-from", "0"], "--resume-from must be"),
    # --- train: the run folder against the inputs (refused before torch is imported)
    ("out_inside_model", ["train", "--preset", "nano", "--set", "model={in}/model", "--out", "{in}/model/run"],
     "lies inside this command's input"),
    ("out_is_prompts_file", ["train", "--preset", "nano", "--set", "model={in}/model", "--set",
                             "prompts_file={in}/prompts.jsonl", "--out", "{in}/prompts.jsonl"], "is this command's input"),
    ("out_holds_model", ["train", "--preset", "nano", "--set", "model={in}/model", "--out", "{in}", "--overwrite"],
     "holds this command's input"),
    ("out_under_a_file", ["train", "--preset", "nano", "--set", "model={in}/model", "--out", "{in}/afile/run"],
     "is a file, not a folder"),
    # --- train: run folders (checkpoints, lock)
    ("resume_corrupt_latest", ["train", "--out", "{in}/run_corrupt", "--resume"],
     "is corrupt: trainable.safetensors has"),
    ("resume_latest_outside", ["train", "--out", "{in}/run_latest_outside", "--resume"],
     "not a checkpoint folder of this run"),
    ("resume_planted_pickle", ["train", "--out", "{in}/run_pickle", "--resume"], "--trust-checkpoint-pickle"),
    ("resume_from_missing_step", ["train", "--out", "{in}/run", "--resume", "--resume-from", "7"],
     "has no checkpoint of step 7"),
    ("resume_nothing_intact", ["train", "--out", "{in}/run_nothing_intact", "--resume"],
     "none of its checkpoints is intact"),
    ("resume_no_run", ["train", "--out", "{in}/geneval", "--resume"], "holds no run"),
    ("resume_changed_config", ["train", "--out", "{in}/run", "--resume", "--set", "lr=0.5"], "the config differs"),
    ("run_exists", ["train", "--config", "{in}/run/config.json", "--out", "{in}/run"], "already holds a run"),
    ("run_held_by_another", ["train", "--out", "{in}/run_locked", "--resume"], "is in use by another gvu process (pid"),
    # --- model folders (train reads them before the model loads; score too)
    ("train_model_config_list", NANO + ["--set", "model={in}/bad/cfg_list"], "config.json: expected a JSON object"),
    ("train_model_backend_unknown", NANO + ["--set", "model={in}/bad/backend_unknown"], "unknown setting(s) 'cfg'"),
    ("train_model_tokenizer_corrupt", NANO + ["--set", "model={in}/bad/tok_corrupt"], "tokenizer.json: the tokenizer"),
    ("train_model_weights_truncated", NANO + ["--set", "model={in}/bad/weights_trunc"], "bytes, but its header"),
    ("score_model_config_list", SCORE + ["--model", "{in}/bad/cfg_list"], "config.json: expected a JSON object"),
    ("score_model_config_empty", SCORE + ["--model", "{in}/bad/cfg_empty"], "the file is empty"),
    ("score_model_config_binary", SCORE + ["--model", "{in}/bad/cfg_binary"], "is not text"),
    ("score_model_config_bad_vq", SCORE + ["--model", "{in}/bad/cfg_badvq"], "not a valid Janus config"),
    ("score_model_backend_unknown", SCORE + ["--model", "{in}/bad/backend_unknown"], "unknown setting(s) 'cfg'"),
    ("score_model_backend_garbage", SCORE + ["--model", "{in}/bad/backend_garbage"], "is not valid JSON"),
    ("score_model_backend_type", SCORE + ["--model", "{in}/bad/backend_type"], "'text_batch_size' has the wrong type"),
    ("score_model_tokenizer_corrupt", SCORE + ["--model", "{in}/bad/tok_corrupt"], "tokenizer.json: the tokenizer"),
    ("score_model_tokenizer_semantic", SCORE + ["--model", "{in}/bad/tok_semantic"], "its tokenizer"),
    ("score_model_weights_truncated", SCORE + ["--model", "{in}/bad/weights_trunc"], "bytes, but its header"),
    ("score_model_weights_garbage", SCORE + ["--model", "{in}/bad/weights_garbage"], "not a readable safetensors"),
    ("score_model_weights_shape", SCORE + ["--model", "{in}/bad/weights_shape"], "the weights do not load"),
    # --- score: options and outputs
    ("score_nothing", ["score", "--model", "{in}/model"], "give either a GenEval FOLDER or --image"),
    ("score_folder_and_prompt", ["score", "{in}/geneval", "--prompt", "x", "--model", "{in}/model"],
     "--prompt goes with --image"),
    ("score_image_without_prompt", ["score", "--image", "{in}/img.png", "--model", "{in}/model"], "--image needs --prompt"),
    ("score_out_is_the_image", SCORE + ["--model", "{in}/model", "--out", "{in}/img.png", "--overwrite"],
     "is this command's input"),
    ("score_out_in_a_prompt_folder", ["score", "{in}/geneval", "--model", "{in}/model", "--out",
                                      "{in}/geneval/00000/metadata.jsonl", "--overwrite"], "lies inside"),
    ("score_out_in_the_model", SCORE + ["--model", "{in}/model", "--out", "{in}/model/scores.jsonl"], "lies inside"),
    ("score_model_missing", SCORE + ["--model", "{in}/none"], "is not a directory"),
    ("score_empty_query", SCORE + ["--model", "{in}/model", "--query", " "], "query must not be empty"),
    ("score_image_wrong_size", ["score", "--image", "{in}/small.png", "--prompt", "a red circle", "--model",
                                "{in}/model"], "reads 64x64 images"),
    # --- eval and the nano world
    ("eval_out_is_metadata", ["eval", "{in}/geneval", "--out", "{in}/geneval/00000/metadata.jsonl", "--overwrite"],
     "lies inside this command's input"),
    ("eval_out_is_a_sample", ["eval", "{in}/geneval", "--out", "{in}/geneval/00000/samples/0000.png", "--overwrite"],
     "lies inside this command's input"),
    ("eval_summary_into_a_prompt_folder", ["eval", "{in}/geneval", "--out", "{in}/geneval/00001/r.jsonl"],
     "lies inside this command's input"),
    ("eval_image_size_small", ["eval", "{in}/geneval", "--image-size", "8"], "--image-size must be at least 32"),
    ("eval_folder_missing", ["eval", "{in}/none"], "is not a folder"),
    ("render_image_size_huge", ["world", "render", "{in}/prompts.jsonl", "-o", "{out}/r", "--image-size", "100000"],
     "--image-size must be at most 2048"),
    ("render_out_holds_input", ["world", "render", "{in}/prompts.jsonl", "-o", "{in}", "--overwrite"],
     "holds this command's input"),
    ("render_out_is_a_file", ["world", "render", "{in}/prompts.jsonl", "-o", "{in}/prompts.jsonl", "--overwrite"],
     "exists and is not a folder"),
    ("prompts_n_huge", ["world", "prompts", "-n", "100000000", "-o", "{out}/p.jsonl"], "-n must be in 1..100,000"),
    ("prompts_out_is_a_folder", ["world", "prompts", "-n", "3", "-o", "{in}/geneval"], "is a folder"),
]


def bad_models(src: str, base: str) -> None:
    """Damaged copies of a good model folder, one fault each."""
    def variant(name, change):
        d = os.path.join(base, name)
        shutil.copytree(src, d)
        change(d)

    def write(d, name, data):
        with open(os.path.join(d, name), "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)

    def truncate(d):
        p = os.path.join(d, "model.safetensors")
        data = open(p, "rb").read()
        write(d, "model.safetensors", data[: len(data) // 2])

    def wider(d):
        c = json.load(open(os.path.join(d, "config.json")))
        c["text_config"]["intermediate_size"] = c["text_config"]["intermediate_size"] + 8
        write(d, "config.json", json.dumps(c))

    good = json.load(open(os.path.join(src, "config.json")))
    variant("cfg_list", lambda d: write(d, "config.json", "[1, 2]"))
    variant("cfg_empty", lambda d: write(d, "config.json", ""))
    variant("cfg_binary", lambda d: write(d, "config.json", bytes(range(256)) * 3))
    variant("cfg_badvq", lambda d: write(d, "config.json", json.dumps({**good, "vq_config": "x"})))
    variant("backend_unknown", lambda d: write(d, "gvu_backend.json", json.dumps({"cfg": 3})))
    variant("backend_garbage", lambda d: write(d, "gvu_backend.json", "{nonsense"))
    variant("backend_type", lambda d: write(d, "gvu_backend.json", json.dumps({"text_batch_size": "big"})))
    variant("tok_corrupt", lambda d: write(d, "tokenizer.json", '{"model": 5'))
    variant("tok_semantic", lambda d: write(d, "tokenizer.json", json.dumps({"model": {"type": "Nope"}})))
    variant("weights_trunc", truncate)
    variant("weights_garbage", lambda d: write(d, "model.safetensors", bytes(range(256)) * 20))
    variant("weights_shape", wider)


def make_inputs(root: str) -> None:
    import gvu.train as train_mod
    from gvu.config import TrainConfig

    model = os.path.join(root, "model")
    m, tok = build_random("smoke", seed=0)
    save_model(m, tok, SPECS["smoke"], model)
    bad_models(model, os.path.join(root, "bad"))
    Image.new("RGB", (64, 64), (255, 255, 255)).save(os.path.join(root, "img.png"))
    Image.new("RGB", (48, 48), (255, 255, 255)).save(os.path.join(root, "small.png"))
    assert gvu_main(["world", "prompts", "-n", "2", "-o", os.path.join(root, "prompts.jsonl")]) == 0
    assert gvu_main(["world", "render", os.path.join(root, "prompts.jsonl"), "-o", os.path.join(root, "geneval"),
                     "--images-per-prompt", "1"]) == 0
    with open(os.path.join(root, "binary.json"), "wb") as f:
        f.write(bytes(range(256)) * 4)
    with open(os.path.join(root, "deep.json"), "w") as f:
        f.write("[" * 100_000 + "]" * 100_000)
    with open(os.path.join(root, "list.json"), "w") as f:
        f.write("[1, 2]")
    with open(os.path.join(root, "broken.json"), "w") as f:
        f.write('{"lr": ')
    with open(os.path.join(root, "afile"), "w") as f:
        f.write("a file, not a folder")
    run = os.path.join(root, "run")
    cfg = TrainConfig(model=model, steps=2, batch_prompts=2, group_size=2, train_prompts=16, eval_every=0, grid_every=0,
                      checkpoint_every=1, threads=1, final_eval=False, lr=1e-3, warmup_steps=0)
    train_mod.train(cfg, run, progress=False)
    runs = {name: os.path.join(root, name) for name in
            ("run_corrupt", "run_latest_outside", "run_pickle", "run_nothing_intact", "run_locked")}
    for path in runs.values():
        shutil.copytree(run, path)
    ck = "checkpoints/step_000002"
    with open(os.path.join(runs["run_corrupt"], ck, "trainable.safetensors"), "r+b") as f:
        f.truncate(100)
    with open(os.path.join(runs["run_latest_outside"], "checkpoints/latest"), "w") as f:
        f.write(os.path.join(run, ck))
    pickled = os.path.join(runs["run_pickle"], ck)
    for name in ("manifest.json", "state.json", "optimizer.safetensors"):
        os.remove(os.path.join(pickled, name))
    with open(os.path.join(pickled, "state.pt"), "wb") as f:
        f.write(b"\x80\x04K\x01.")  # a pickle (of the number 1): refused unread, whatever it holds
    os.remove(os.path.join(runs["run_nothing_intact"], "checkpoints/latest"))
    for step in ("step_000001", "step_000002"):
        os.remove(os.path.join(runs["run_nothing_intact"], "checkpoints", step, "state.json"))


def tree(root: str) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            out[rel] = "dir" if os.path.isdir(path) else hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def run_case(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gvu.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)


# Reads {"id": argv} (JSON) on stdin; runs each argv through gvu.cli.main in a forked child (stdout and stderr to
# files, exit status as the CLI's), four at a time; writes {"id": [status, stdout, stderr]} (JSON) on stdout.
# Only imports happen before the forks (no OpenMP thread pool exists yet to be copied half-way).
FORK_SERVER = r"""
import json, os, sys, tempfile, traceback
import torch, transformers, gvu.cli, gvu.train, gvu.models.janus, gvu.world.cli  # imported once, shared by the forks
cases = json.load(sys.stdin)
scratch = tempfile.mkdtemp()
running, results = {}, {}

def child(cid, argv):
    out, err = (os.open(os.path.join(scratch, cid + s), os.O_WRONLY | os.O_CREAT, 0o600) for s in (".out", ".err"))
    os.dup2(out, 1)
    os.dup2(err, 2)
    try:
        code = gvu.cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors, SIGTERM
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

def reap():
    pid, status = os.wait()
    cid = running.pop(pid)
    read = lambda s: open(os.path.join(scratch, cid + s), errors="replace").read()
    results[cid] = [os.waitstatus_to_exitcode(status), read(".out"), read(".err")]

for cid, argv in cases.items():
    while len(running) >= 4:
        reap()
    pid = os.fork()
    if pid == 0:
        child(cid, argv)
    running[pid] = cid
while running:
    reap()
json.dump(results, sys.stdout)
"""


def run_forked(argv: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    server = subprocess.run([sys.executable, "-c", FORK_SERVER], input=json.dumps(argv), capture_output=True,
                            text=True, env=ENV, timeout=1200)
    assert server.returncode == 0, server.stderr[-3000:]
    return {cid: subprocess.CompletedProcess(argv[cid], rc, out, err)
            for cid, (rc, out, err) in json.loads(server.stdout).items()}


# the cases that also run as `python -m gvu.cli` subprocesses: the entry point, with and without torch imported
ENTRY_POINT_CASES = ("lr_inf", "config_binary", "out_inside_model", "resume_corrupt_latest", "resume_planted_pickle",
                     "score_model_weights_truncated", "eval_out_is_metadata")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case run once, several at a time; then the inputs' hashes before and after."""
    inputs = str(tmp_path_factory.mktemp("inputs"))
    outputs = str(tmp_path_factory.mktemp("outputs"))
    make_inputs(inputs)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from gvu.run_lock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)",
                               os.path.join(inputs, "run_locked")], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree(inputs)
        argv = {cid: [a.replace("{in}", inputs).replace("{out}", outputs) for a in args] for cid, args, _ in CASES}
        done = run_forked(argv)
        with ThreadPoolExecutor(max_workers=2) as pool:
            entry = dict(zip(ENTRY_POINT_CASES, pool.map(run_case, [argv[c] for c in ENTRY_POINT_CASES])))
        after = tree(inputs)
    finally:
        holder.kill()
        holder.wait()
    return {"done": done, "entry": entry, "before": before, "after": after, "outputs": os.listdir(outputs),
            "holder": holder.pid}


def test_the_table_holds_at_least_60_distinct_bad_inputs():
    assert len(CASES) >= 60 and len({cid for cid, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("cid, words", [(cid, words) for cid, _, words in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_refused_with_one_clear_line(outcomes, cid, words):
    r = outcomes["done"][cid]
    assert "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    assert r.returncode == 2 and last.startswith("gvu: error: "), (r.returncode, r.stderr[-2000:])
    assert words in last, last
    if cid == "run_held_by_another":
        assert f"(pid {outcomes['holder']})" in last


@pytest.mark.parametrize("cid", ENTRY_POINT_CASES)
def test_python_m_gvu_cli_refuses_as_the_forked_main_does(outcomes, cid):
    r, forked = outcomes["entry"][cid], outcomes["done"][cid]
    assert "Traceback" not in r.stderr and r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == forked.stderr.strip().splitlines()[-1]


def test_no_bad_input_changed_or_added_an_input_file_or_made_an_output(outcomes):
    assert outcomes["after"] == outcomes["before"]
    assert outcomes["outputs"] == []
