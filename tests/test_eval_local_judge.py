"""The local transformers judge on tiny random vision-language models built from configs (offline, CPU; see
gvu/eval/tiny_vlm.py): Qwen2-VL through LocalJudge directly, and LLaVA saved to a folder and loaded by
`--judge local:DIR` through AutoProcessor / AutoModelForImageTextToText."""

import argparse
import json

import pytest
from PIL import Image

from gvu.errors import UserError
from gvu.eval import genevalpp, judge_cli
from gvu.eval.judges import JudgeRequest, LocalJudge
from gvu.eval.tiny_vlm import save_tiny_llava, tiny_qwen2_vl

def test_tiny_qwen2_vl_judge_answers_a_batch_as_it_answers_each_request_alone():
    model, processor = tiny_qwen2_vl()
    judge = LocalJudge(model, processor, name="local:tiny-qwen2-vl", batch_size=3)
    requests = [JudgeRequest(image=Image.new("RGB", (40 + 10 * k, 56), (60 * k, 90, 200)),
                             user=f"question {k}?" * (k + 1),
                             system=genevalpp.SYSTEM_PROMPT, max_tokens=4) for k in range(3)]
    batched = dict(judge.stream(requests))
    alone = [next(judge.stream([r]))[1].text for r in requests]
    assert [batched[k].text for k in range(3)] == alone  # left padding changes no greedy answer
    assert all(r.judge == "local:tiny-qwen2-vl" for r in batched.values())
    assert judge.stats.requests == 6
    text = judge.prompt_text(requests[0])
    assert text.startswith("<|im_start|>system\nYou are an expert image evaluator.")
    assert "<|vision_start|><|image_pad|><|vision_end|>question 0?<|im_end|>" in text


def test_local_judge_dir_scores_a_genevalpp_folder_end_to_end_and_refuses_the_evaluated_model(tmp_path):
    judge_dir = tmp_path / "tiny-llava"
    save_tiny_llava(judge_dir)
    folder = tmp_path / "gpp"
    folder.mkdir()
    with open(folder / "prompts.jsonl", "w") as f:
        for i, tag in enumerate(["counting", "color_attr"]):
            f.write(json.dumps({"tag": tag, "include": [{"class": "cup", "count": i + 1}], "prompt": f"p{i}"}) + "\n")
            Image.new("RGB", (32, 32), (100 * i, 50, 50)).save(folder / f"{i}.png")
    parser = argparse.ArgumentParser()
    parser.add_argument("folder")
    parser.add_argument("--scorer", default="genevalpp")
    parser.add_argument("--out")
    parser.add_argument("--overwrite", action="store_true")
    judge_cli.add_judge_arguments(parser)
    args = parser.parse_args([str(folder), "--judge", f"local:{judge_dir}", "--max-new-tokens", "3"])
    summary = judge_cli.run(args)
    # a random model writes no JSON: 6 tries each, then counted wrong
    assert summary["overall"] == 0.0 and summary["failed_after_tries"] == 2
    assert summary["judge"] == f"local:{judge_dir.resolve()}"
    with open(folder / "eval-genevalpp" / genevalpp.VERDICTS_FILE) as f:
        assert [json.loads(line)["tries"] for line in f] == [6, 6]

    (folder / "generation.json").write_text(json.dumps({"model": str(judge_dir)}))
    with pytest.raises(UserError, match="must not judge its own benchmark"):
        judge_cli.run(args)
