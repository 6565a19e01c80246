"""Does a nano-Janus's understanding branch read the text it is given, or only the image?

Two measurements, no training:

  questions   Two-object scenes whose objects differ in colour and shape. For each object the model is asked "What
              color is the <shape>?" (answer chosen by likelihood among the colours, as benchmarks/nano_model_eval.py
              does) and "Is there a <colour> <shape>?" for that object and for a colour-shape pair not in the scene.
              A model that reads the question gives the two objects' colour questions different answers, and puts
              more weight on "yes" for the present pair than for the absent one. Reported: colour accuracy, how often
              both questions get the same answer, the mean largest change of an answer's log-probability between the
              two questions, and the ROC-AUC of log p(yes) - log p(no) for present against absent pairs.
  relations   GenEval position prompts of the eval and the train split ("a photo of a star left of a circle"), each
              with freshly drawn scenes: how often the true prompt out-scores its mirror (relation flipped) by
              log p(prompt | image), split by whether that mirror is itself a train prompt. The split holds out prompt
              texts, so for many eval prompts the model trained on the mirrored text and never on the true one. A
              model that reads the relation from the image scores the same on both splits; one that learnt which
              way a pair's relation goes from the training texts scores above chance on train prompts and below it
              on eval prompts whose mirror it trained on.

Usage: python experiments/text_reading.py [--model models/nano-janus] [--scenes 300] [--per-prompt 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import defaultdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.nano_model_eval import pixels_of, score_texts  # noqa: E402
from gvu.models.janus import JanusBackend  # noqa: E402
from gvu.models.pretrain import mirror_is_train, train_scene  # noqa: E402
from gvu.world.captions import REWARD_QUERY  # noqa: E402
from gvu.world.perturb import perturb  # noqa: E402
from gvu.world.prompts import make_suite  # noqa: E402
from gvu.world.sampler import sample_scene  # noqa: E402
from gvu.world.scene import render  # noqa: E402
from gvu.world.vocab import COLOR_NAMES, SHAPES  # noqa: E402


def roc_auc(pos: list[float], neg: list[float]) -> float:
    """P(a positive scores above a negative), ties counting half."""
    p, n = np.asarray(pos)[:, None], np.asarray(neg)[None, :]
    return float(((p > n).sum() + 0.5 * (p == n).sum()) / (p.size * n.size))


@torch.no_grad()
def questions(b: JanusBackend, n_scenes: int, seed: int) -> dict:
    rng = random.Random(seed)
    right, same, shift, yes_present, yes_absent = [], [], [], [], []
    while len(same) < n_scenes:
        _, scene = train_scene(rng)
        objs = scene.objects
        if len(objs) != 2 or objs[0].color == objs[1].color or objs[0].shape == objs[1].shape:
            continue
        px = pixels_of([render(scene)])
        dists = []
        for o in objs:
            total, _ = score_texts(b, px.repeat(len(COLOR_NAMES), 1, 1, 1), f"What color is the {o.shape}?",
                                   list(COLOR_NAMES))
            dists.append(total)
            right.append(COLOR_NAMES[int(total.argmax())] == o.color)
        same.append(int(dists[0].argmax()) == int(dists[1].argmax()))
        shift.append(float((dists[0] - dists[1]).abs().max()))
        present = {(o.color, o.shape) for o in objs}
        absent = [(c, s) for c in COLOR_NAMES for s in SHAPES if (c, s) not in present]
        for (c, s), bucket in [((objs[0].color, objs[0].shape), yes_present), (rng.choice(absent), yes_absent)]:
            total, _ = score_texts(b, px.repeat(2, 1, 1, 1), f"Is there a {c} {s}?", ["yes", "no"])
            bucket.append(float(total[0] - total[1]))
    return {"scenes": len(same), "colour_accuracy": float(np.mean(right)),
            "both_objects_get_the_same_colour": float(np.mean(same)),
            "mean_largest_logp_change_between_the_two_questions": float(np.mean(shift)),
            "exists_auc_present_vs_absent": roc_auc(yes_present, yes_absent)}


@torch.no_grad()
def relations(b: JanusBackend, per_prompt: int, seed: int) -> dict:
    rng = random.Random(seed)
    out = {}
    for split in ("eval", "train"):
        prompts = list({m["prompt"]: m for m in make_suite("geneval", split, seed=0) if m["tag"] == "position"}.values())
        wins = defaultdict(list)
        for m in prompts:
            mirror = perturb(m, "relation", rng)
            group = "mirror is a train prompt" if mirror_is_train(m, "geneval") else "mirror is not a train prompt"
            for _ in range(per_prompt):
                px = pixels_of([render(sample_scene(m, rng))]).repeat(2, 1, 1, 1)
                total, _ = score_texts(b, px, REWARD_QUERY, [m["prompt"], mirror["prompt"]])
                wins[group].append(bool(total[0] > total[1]))
                wins["all"].append(wins[group][-1])
        out[split] = {"prompts": len(prompts),
                      **{g: {"true_beats_mirror": float(np.mean(v)), "n": len(v)} for g, v in sorted(wins.items())}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--scenes", type=int, default=300, help="two-object scenes for the questions")
    ap.add_argument("--per-prompt", type=int, default=6, help="scenes drawn for each position prompt")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write results.json here")
    args = ap.parse_args()
    if args.scenes < 1 or args.per_prompt < 1:
        ap.error("--scenes and --per-prompt must be at least 1")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    b = JanusBackend.from_pretrained(args.model)
    b.model.eval()
    res = {"model": args.model, "questions": questions(b, args.scenes, args.seed),
           "relations": relations(b, args.per_prompt, args.seed)}
    res["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    q = res["questions"]
    print(f"questions: colour {q['colour_accuracy']:.3f}; both objects get the same colour "
          f"{q['both_objects_get_the_same_colour']:.3f}; largest log-prob change between them "
          f"{q['mean_largest_logp_change_between_the_two_questions']:.3f}; exists AUC {q['exists_auc_present_vs_absent']:.3f}")
    for split, r in res["relations"].items():
        print(f"relations, {split} split ({r['prompts']} prompts): true beats mirror " + "; ".join(
            f"{g} {v['true_beats_mirror']:.3f} (n {v['n']})" for g, v in r.items() if g != "prompts"))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
