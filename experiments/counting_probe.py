"""Why does the GvU reward rank generated counting images at chance? Does the judge read a count at all?

For every counting prompt of the eval split ("a photo of three stars"), the model generates images; the exact
evaluator's detector counts the objects of the named shape (and blobs that match no shape). The judge then scores
the same prompt with each count word from two to four in place of the true one, under the reward's query, and
its reading of the count is the count word with the highest log p(prompt | image). The script prints:
  - how often the judge's count equals the detected count, on generated images and, as a control, on clean
    renderings of scenes with that count;
  - the judge's count against the detected count (a confusion table), so a judge that answers "four" whatever
    it sees shows as one full column;
  - the same against all objects in the image, whatever their shape (does it count objects, not stars?);
  - how the wrong images fail: too few or too many objects of the shape, other shapes, or blobs.
It saves a grid of wrong images labelled with both counts (PNG) for a look.

Usage: python -m experiments.counting_probe [--model models/nano-janus] [--images 4] [--threads 1] [--out runs/counting-probe]
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageDraw

from gvu.config import RewardConfig, SamplingConfig
from gvu.models.janus import JanusBackend
from gvu.models.pretrain import to_pixels
from gvu.reward import to_uint8
from gvu.world.evaluator import detect, evaluate_image
from gvu.world.perturb import perturb
from gvu.world.prompts import make_suite
from gvu.world.sampler import sample_scene
from gvu.world.scene import render

COUNTS = (2, 3, 4)


def with_count(metadata: dict, count: int) -> str:
    """The counting prompt with `count` in place of its own count (the world's minimal count edit)."""
    if count == metadata["include"][0]["count"]:
        return metadata["prompt"]
    return perturb(metadata, "count", random.Random(0), count=count)["prompt"]


@torch.no_grad()
def judge_counts(b, pixels: torch.Tensor, md: list[dict]) -> np.ndarray:
    """The count word (from COUNTS) the judge finds likeliest for each image: argmax of sum_j log p_j."""
    query = RewardConfig().query
    scores = []
    for c in COUNTS:
        texts = [with_count(m, c) for m in md]
        tl = b.text_logprobs(pixels, query, texts)
        scores.append((tl.logprobs * tl.mask).sum(1).cpu().numpy())
    return np.array(COUNTS)[np.argmax(np.stack(scores, 1), 1)]


def clean_renderings(md: list[dict], seed: int) -> torch.Tensor:
    """A scene per prompt with exactly the prompt's objects, rendered by the world (pixels in [-1, 1])."""
    rng = random.Random(seed)
    return to_pixels([render(sample_scene(m, rng)) for m in md])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/counting-probe")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    b = JanusBackend.from_pretrained(args.model)
    md = [m for m in make_suite("geneval", "eval", seed=0) if m["tag"] == "counting"]
    rows = [m for m in md for _ in range(args.images)]
    detected, judged, correct, blobs, others, pics = [], [], [], [], [], []
    for s in range(0, len(rows), 64):
        chunk = rows[s:s + 64]
        px = b.decode_images(b.sample_image_tokens([m["prompt"] for m in chunk], SamplingConfig(seed=2024 + s)))
        judged += list(judge_counts(b, px, chunk))
        for m, img in zip(chunk, to_uint8(px)):
            dets = detect(img)
            shape = m["include"][0]["class"]
            detected.append(sum(d.shape == shape for d in dets))
            blobs.append(sum(d.shape is None for d in dets))
            others.append(sum(d.shape not in (None, shape) for d in dets))
            correct.append(evaluate_image(m, img).correct)
            pics.append(img)
    true = np.array([m["include"][0]["count"] for m in rows])
    detected, judged, correct = np.array(detected), np.array(judged), np.array(correct)
    blobs, others = np.array(blobs), np.array(others)
    total = detected + blobs + others  # every object in the image, whatever its shape

    # control: clean renderings of scenes with the true count
    judged_ren = judge_counts(b, clean_renderings(md, seed=7), md)
    true_md = np.array([m["include"][0]["count"] for m in md])

    in_range = np.isin(detected, COUNTS)
    res = {
        "images": len(rows), "correct_rate": float(correct.mean()),
        "judge_equals_detected_count": float((judged[in_range] == detected[in_range]).mean()),
        "judge_equals_prompt_count": float((judged == true).mean()),
        "judge_equals_object_count": float((judged[np.isin(total, COUNTS)] == total[np.isin(total, COUNTS)]).mean()),
        "judge_equals_true_count_on_renderings": float((judged_ren == true_md).mean()),
        "images_with_detected_count_in_2_4": int(in_range.sum()),
        "judge_count_share": {int(c): float((judged == c).mean()) for c in COUNTS},
        "judge_count_share_on_renderings": {int(c): float((judged_ren == c).mean()) for c in COUNTS},
        "wrong_images": {
            "n": int((~correct).sum()),
            "too_few_of_shape": float((detected[~correct] < true[~correct]).mean()),
            "too_many_of_shape": float((detected[~correct] > true[~correct]).mean()),
            "with_unshaped_blobs": float((blobs[~correct] > 0).mean()),
            "with_other_shapes": float((others[~correct] > 0).mean()),
            "all_objects_equal_prompt_count": float((total == true)[~correct].mean()),
        },
    }
    print(json.dumps(res, indent=1))
    print("\nJudge's count (columns) against detected count of the named shape (rows), generated images:\n")
    print("| detected | " + " | ".join(f"judge {c}" for c in COUNTS) + " |")
    print("|---|" + "---|" * len(COUNTS))
    for d in sorted(Counter(detected.tolist())):
        print(f"| {d} | " + " | ".join(str(int(((detected == d) & (judged == c)).sum())) for c in COUNTS) + " |")
    print("\nThe same against all objects in the image (any shape, and blobs), generated images:\n")
    print("| objects | " + " | ".join(f"judge {c}" for c in COUNTS) + " |")
    print("|---|" + "---|" * len(COUNTS))
    for d in sorted(Counter(total.tolist())):
        print(f"| {d} | " + " | ".join(str(int(((total == d) & (judged == c)).sum())) for c in COUNTS) + " |")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "counting_probe.json"), "w") as f:
        json.dump(res, f, indent=1)
    wrong = [i for i in range(len(rows)) if not correct[i]][:40]
    scale, cols = 3, 8
    sheet = Image.new("RGB", (cols * 64 * scale, ((len(wrong) + cols - 1) // cols) * (64 * scale + 28)), "white")
    for k, i in enumerate(wrong):
        x, y = (k % cols) * 64 * scale, (k // cols) * (64 * scale + 28)
        sheet.paste(Image.fromarray(pics[i]).resize((64 * scale, 64 * scale), Image.NEAREST), (x, y))
        ImageDraw.Draw(sheet).text((x + 2, y + 64 * scale + 2),
                                   f"{rows[i]['prompt'][11:]}\ndet {detected[i]} blob {blobs[i]} judge {judged[i]}", fill="black")
    sheet.save(os.path.join(args.out, "wrong_counting.png"))
    print(f"\nwritten: {args.out}/counting_probe.json, {args.out}/wrong_counting.png")


if __name__ == "__main__":
    main()
