"""GenEval++ with an OpenAI-compatible judge, against a scripted server on 127.0.0.1 (no network, no key)."""

import argparse
import hashlib
import json
import os
import socket

import pytest
from PIL import Image

from gvu.errors import UserError
from gvu.eval import genevalpp, judge_cli
from gvu.eval.fake_server import FakeChatServer, FakeReply, user_text
from gvu.eval.judges import JudgeError, OpenAIJudge, backoff_seconds

VALID = '{"correct": 1, "reason": "all there"}'
FENCED = '```json\n{"correct": 0, "reason": "the dog is brown"}\n```'

# prompt -> (tag, script: the reply to the n-th request with this prompt, n = 1, 2, ...)
SCRIPT = {
    "A photo of a red cat": ("color_attr", lambda n: FakeReply(VALID)),
    "A photo of a white dog": ("color_attr", lambda n: FakeReply(FENCED)),
    "A photo of a blue car": ("color_attr", None),  # no image on disk: counts wrong, never sent
    "A photo of three cups": ("counting", lambda n: FakeReply("I think it is fine.")),  # never JSON
    "A photo of two bowls": ("counting", lambda n: FakeReply("slow down", status=429) if n == 1 else FakeReply(
        'Verdict: {"correct": 1, "reason": "two bowls"} done')),
    "A large bus below a small kite": ("size_spatial_attr", lambda n: FakeReply(VALID, delay_s=1.0) if n == 1
                                       else FakeReply(VALID)),  # the first try times out
}


def responder(payload, seen):
    prompt = user_text(payload).split("\n")[1]
    return SCRIPT[prompt][1](seen)


def make_folder(root, script=SCRIPT):
    folder = root / "gpp"
    folder.mkdir()
    with open(folder / "prompts.jsonl", "w") as f:
        for i, (prompt, (tag, reply)) in enumerate(script.items()):
            f.write(json.dumps({"tag": tag, "include": [{"class": "cat", "count": 1}], "prompt": prompt}) + "\n")
            if reply is not None:
                Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(folder / f"{i}.png")
    return folder


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--scorer", default="genevalpp")
    parser.add_argument("--out")
    parser.add_argument("--overwrite", action="store_true")
    judge_cli.add_judge_arguments(parser)
    return parser.parse_args(argv)


@pytest.fixture
def local_endpoint(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)

    def point(url):
        monkeypatch.setenv("OPENAI_BASE_URL", url)
    return point


def test_system_prompt_is_the_official_text():
    # sha256 of SYSTEM_PROMPT in matrix0721/GvU evaluation/evaluation_geneval_plus.py (commit 8bb5415)
    digest = hashlib.sha256(genevalpp.SYSTEM_PROMPT.encode()).hexdigest()
    assert digest == "819efd5edb91428f4f804edc5199782dff55d9c70630e603babdb1402556bcae"


def test_checklist_spells_counts_colours_sizes_regions_and_exclusions_as_the_official_function():
    metadata = {"include": [{"class": "dog", "count": 2, "color": "red", "size": "larger", "region": "left"},
                            {"class": "cup", "count": 1}],
                "exclude": [{"class": "dog", "count": 3}, {"class": "cup", "count": 1}], "prompt": "  p  "}
    assert genevalpp.checklist(metadata) == (
        "This image should contain:\n"
        "- red-colored larger 2 dogs located in the left part of the image.\n"
        "- 1 cup present in the image.\n"
        "- No more than 2 dogs should appear.\n"
        "- No more than 0 cup should appear.")
    assert genevalpp.user_message(metadata).startswith("Instruction:\np\n\nExpectation checklist:\nThis image")


def test_json_is_extracted_from_fences_and_prose_and_a_reply_without_one_raises():
    assert genevalpp.extract_json(FENCED) == {"correct": 0, "reason": "the dog is brown"}
    assert genevalpp.extract_json('ok {"correct": 1} bye')["correct"] == 1
    with pytest.raises(ValueError):
        genevalpp.extract_json("no verdict here")
    assert genevalpp.is_correct({"correct": True}) and not genevalpp.is_correct({"correct": "1"})


def test_verdicts_retries_failures_and_tag_means_then_a_rerun_asks_only_what_is_not_cached(
        tmp_path, local_endpoint, capsys):
    folder = make_folder(tmp_path)
    with FakeChatServer(responder) as server:
        local_endpoint(server.base_url)
        args = parse([str(folder), "--judge", "openai:fake-vlm", "--timeout", "0.4", "--retries", "2",
                      "--backoff", "0.01", "--concurrency", "4"])
        summary = judge_cli.run(args)
        # 1 (valid) + 1 (fenced) + 6 protocol tries (no JSON) + 2 (429, then JSON in prose) + 2 (timeout, then valid)
        assert server.count == 12
        assert {r["auth"] for r in server.requests} == {"Bearer EMPTY"}  # local server: a dummy key
        first = server.requests[0]["body"]
        assert first["temperature"] == 0.0 and first["max_tokens"] == 200
        assert first["messages"][0] == {"role": "system", "content": genevalpp.SYSTEM_PROMPT}
        assert first["messages"][1]["content"][1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
        # color_attr 1/3 (the fenced 0 and the missing image are wrong), counting 1/2 (no JSON after 6 tries is
        # wrong), size_spatial_attr 1/1; overall = (0.3333 + 0.5 + 1.0) / 3 = 0.6111
        assert summary["tag_accuracy"] == {"color_attr": 0.3333, "counting": 0.5, "size_spatial_attr": 1.0}
        assert summary["overall"] == 0.6111
        assert summary["failed_after_tries"] == 1 and summary["missing_images"] == 1
        out = folder / "eval-genevalpp"
        verdicts = [json.loads(line) for line in open(out / genevalpp.VERDICTS_FILE)]
        assert {v["judge"] for v in verdicts} == {f"openai:fake-vlm@{server.base_url}"}
        by_index = {v["index"]: v for v in verdicts}
        assert by_index[3]["result"]["correct"] == -1 and by_index[3]["tries"] == 6
        assert 2 not in by_index  # the missing image is counted wrong but not cached: it is judged once generated
        assert by_index[1]["result"]["reason"] == "the dog is brown" and by_index[1]["raw"] == FENCED
        assert json.load(open(out / genevalpp.RESULTS_JSON))["judge"] == f"openai:fake-vlm@{server.base_url}"
        assert "| **overall (mean of 3 tags)** | | **0.6111** |" in open(out / genevalpp.RESULTS_MD).read()

        again = judge_cli.run(args)
        assert server.count == 12  # every verdict cached: nothing sent
        assert again["overall"] == summary["overall"]

        lines = {json.loads(ln)["index"]: ln for ln in open(out / genevalpp.VERDICTS_FILE)}
        with open(out / genevalpp.VERDICTS_FILE, "w") as f:  # lose image 0's verdict, and image 1's cut short
            f.writelines(ln for i, ln in lines.items() if i not in (0, 1))
            f.write(lines[1][:10])
        Image.new("RGB", (32, 32), (9, 9, 9)).save(folder / "4.png")  # image 4 regenerated
        (folder / "5.png").write_bytes(b"not a png")  # image 5 broken: wrong, not sent
        third = judge_cli.run(args)
        assert server.count == 12 + 3  # only the two lost verdicts and the new image are asked again
        assert third["tag_accuracy"]["size_spatial_attr"] == 0.0 and third["missing_images"] == 2
    assert "estimate: 5 requests" in capsys.readouterr().out


def test_a_judge_that_cannot_be_reached_fails_clearly_after_the_retries_and_writes_no_results(
        tmp_path, local_endpoint):
    folder = make_folder(tmp_path)
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    local_endpoint(f"http://127.0.0.1:{port}/v1")
    args = parse([str(folder), "--judge", "openai:m", "--retries", "2", "--backoff", "0.01", "--concurrency", "1"])
    with pytest.raises(JudgeError, match="could not be reached after 3 tries"):
        judge_cli.run(args)
    assert not os.path.exists(folder / "eval-genevalpp" / genevalpp.RESULTS_JSON)
    assert not [n for n in os.listdir(folder / "eval-genevalpp") if n.endswith(".tmp")]


def test_a_server_that_keeps_failing_is_retried_with_backoff_then_stops_the_run(tmp_path, local_endpoint):
    folder = make_folder(tmp_path)
    with FakeChatServer(lambda payload, seen: FakeReply("overloaded", status=503)) as server:
        local_endpoint(server.base_url)
        args = parse([str(folder), "--judge", "openai:m", "--retries", "3", "--backoff", "0.01", "--concurrency", "1"])
        with pytest.raises(JudgeError, match="after 4 tries"):
            judge_cli.run(args)
        assert server.count == 4  # one request, four tries, then the run stops
    assert not os.path.exists(folder / "eval-genevalpp" / genevalpp.RESULTS_JSON)


def test_a_rejected_key_stops_at_once_without_retries(tmp_path, local_endpoint):
    with FakeChatServer(lambda payload, seen: FakeReply("bad key", status=401)) as server:
        local_endpoint(server.base_url)
        judge = OpenAIJudge("m", retries=5, backoff_s=0.01)
        request = genevalpp.make_request(str(make_folder(tmp_path)), {"prompt": "x", "include": []}, 0)
        with pytest.raises(JudgeError, match="HTTP 401"):
            list(judge.stream([request]))
        assert server.count == 1


def test_backoff_doubles_with_jitter_and_is_capped():
    import random
    rng = random.Random(0)
    waits = [backoff_seconds(k, 1.0, 5.0, rng) for k in range(5)]
    for k, w in enumerate(waits):
        assert 0.5 * min(5.0, 2 ** k) <= w <= min(5.0, 2 ** k)


def test_no_key_for_a_remote_endpoint_is_an_error_before_any_work(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.invalid/v1")
    with pytest.raises(UserError, match="OPENAI_API_KEY"):
        judge_cli.run(parse([str(make_folder(tmp_path)), "--judge", "openai:gpt-4.1"]))
    assert not os.path.exists(tmp_path / "gpp" / "eval-genevalpp")


def test_dry_run_prints_the_first_request_with_the_image_as_its_size_and_sends_nothing(
        tmp_path, local_endpoint, capsys):
    folder = make_folder(tmp_path)
    with FakeChatServer(responder) as server:
        local_endpoint(server.base_url)
        assert judge_cli.run(parse([str(folder), "--judge", "openai:m", "--dry-run"])) is None
        assert server.count == 0
    out = capsys.readouterr().out
    assert "5 of 6 images to judge" in out and "Be very strict and conservative" in out
    assert "base64 chars" in out and "A photo of a red cat" in out
    assert not os.path.exists(folder / "eval-genevalpp")


def test_folders_of_another_layout_are_refused(tmp_path):
    dpg_folder = tmp_path / "dpg"
    dpg_folder.mkdir()
    (dpg_folder / "prompts.jsonl").write_text(json.dumps({"item_id": "7", "prompt": "a dog"}) + "\n")
    with pytest.raises(UserError, match="--scorer dpg"):
        judge_cli.run(parse([str(dpg_folder), "--judge", "openai:m"]))
    geneval_folder = tmp_path / "geneval"
    (geneval_folder / "00000" / "samples").mkdir(parents=True)
    with pytest.raises(UserError, match="--scorer geneval"):
        judge_cli.run(parse([str(geneval_folder), "--judge", "openai:m"]))
    no_images = tmp_path / "empty"
    no_images.mkdir()
    (no_images / "prompts.jsonl").write_text(json.dumps({"tag": "counting", "include": [], "prompt": "x"}) + "\n")
    with pytest.raises(UserError, match="none of the images"):
        judge_cli.run(parse([str(no_images), "--judge", "openai:m"]))
    with pytest.raises(UserError, match="openai:MODEL"):
        judge_cli.run(parse([str(no_images), "--judge", "gpt-4.1"]))


def test_verdicts_of_another_judge_are_not_reused(tmp_path, local_endpoint):
    folder = make_folder(tmp_path)
    out = folder / "eval-genevalpp"
    out.mkdir()
    (out / genevalpp.VERDICTS_FILE).write_text(json.dumps({"index": 0, "judge": "openai:other@x", "result": {}}) + "\n")
    with FakeChatServer(responder) as server:
        local_endpoint(server.base_url)
        with pytest.raises(UserError, match="another judge"):
            judge_cli.run(parse([str(folder), "--judge", "openai:m"]))
        assert server.count == 0


def test_gvu_eval_picks_the_judged_scorer_from_the_folders_layout_and_writes_verdicts(tmp_path, local_endpoint,
                                                                                     capsys):
    from gvu.cli import main

    script = {"A photo of a red cat": ("color_attr", lambda n: FakeReply(VALID)),
              "A photo of two bowls": ("counting", lambda n: FakeReply(FENCED))}
    folder = make_folder(tmp_path, script)
    (folder / "generation.json").write_text(json.dumps({"layout": "genevalpp"}))
    with FakeChatServer(lambda payload, seen: script[user_text(payload).split("\n")[1]][1](seen)) as server:
        local_endpoint(server.base_url)
        assert main(["eval", str(folder), "--judge", "openai:fake-vlm", "--out", str(tmp_path / "res")]) == 0
        assert server.count == 2
    verdicts = [json.loads(ln) for ln in open(tmp_path / "res" / genevalpp.VERDICTS_FILE)]
    assert {v["prompt"]: v["result"]["correct"] for v in verdicts} == {"A photo of a red cat": 1,
                                                                        "A photo of two bowls": 0}
    assert all(v["judge"].startswith("openai:fake-vlm@") for v in verdicts)


def test_an_output_that_is_the_image_folder_is_refused_before_any_request(tmp_path, local_endpoint):
    folder = make_folder(tmp_path)
    before = sorted(os.listdir(folder))
    with FakeChatServer(responder) as server:
        local_endpoint(server.base_url)
        with pytest.raises(UserError, match="--out"):
            judge_cli.run(parse([str(folder), "--judge", "openai:fake-vlm", "--out", str(folder), "--overwrite"]))
        assert server.count == 0
    assert sorted(os.listdir(folder)) == before
