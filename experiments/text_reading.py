"""Does a nano-Janus's understanding branch read the text it is given, or only the image?

Two measurements, no training (gvu.nano_eval.question_reading and relation_reading):

  questions   Two-object scenes whose objects differ in colour and shape. For each object the model is asked "What
              color is the <shape>?" (answer chosen by likelihood among the colours, as benchmarks.nano_model_eval
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

Usage: python -m experiments.text_reading [--model models/nano-janus] [--scenes 300] [--per-prompt 6] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from gvu.models.janus import JanusBackend
from gvu.nano_eval import question_reading, relation_reading


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
    res = {"model": args.model, "questions": question_reading(b, args.scenes, args.seed),
           "relations": relation_reading(b, args.per_prompt, args.seed)}
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
