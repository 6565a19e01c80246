"""Measurements of a Janus-family model on rendered nano-world scenes, without training: what the measurement
scripts share (`python -m benchmarks.nano_model_eval`, `python -m experiments.compare_rewards`,
`python -m experiments.text_reading`, ...).

  bench_vq             the exact evaluator's accuracy on the VQ's reconstructions of eval-split renderings
  bench_understanding  caption choice: the true prompt among 3 minimal edits (colour, count, shape or relation), by
                       log p(prompt | image, REWARD_QUERY), the reward's own query
  question_reading     whether the understanding branch reads a question or answers from the image alone
  relation_reading     whether the true position prompt out-scores its mirror, split by whether the mirror is a
                       train prompt (a model that learnt relations from training texts wins only where it is)

Every measurement draws its scenes and edits from fixed seeds, so two models are compared on the same images.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

from gvu.measure import auc, summarise
from gvu.models.pretrain import mirror_is_train, to_pixels, train_scene
from gvu.models.vq_train import quantize
from gvu.reward import reduce_logprobs, to_uint8
from gvu.world.captions import REWARD_QUERY
from gvu.world.evaluator import evaluate_image
from gvu.world.perturb import distractors, perturb
from gvu.world.prompts import HELD_OUT_PAIRS, make_suite
from gvu.world.sampler import sample_scene
from gvu.world.scene import render
from gvu.world.vocab import COLOR_NAMES, SHAPES

EDIT_SEED = 5  # seed of the caption-choice edits (perturb.distractors) drawn for the eval scenes


def eval_scenes(n_prompts: int | None, seed: int, held_out_colours: bool = False) -> list[tuple[dict, object]]:
    """(metadata, scene) for the first n_prompts eval prompts (all when None). As the world renders images of train
    and eval prompts (`gvu world render`) and as pretraining draws its scenes, the colours a prompt leaves open never
    form a held-out pair, so no scene shows an out-of-distribution composition. held_out_colours=True draws those
    colours from all colours instead: then about a fifth of the scenes hold an object of a colour-shape pair no model
    saw in training (the scenes of compare_rewards' understanding column, kept so that new rows compare with cached
    ones)."""
    rng = random.Random(seed)
    prompts = make_suite("geneval", "eval", seed=0)[:n_prompts]
    forbid = frozenset() if held_out_colours else HELD_OUT_PAIRS
    return [(m, sample_scene(m, rng, forbid=forbid)) for m in prompts]


def holds_held_out_pair(scene) -> bool:
    """Whether an object of the scene is a held-out colour-shape pair. Eval prompts name none, but scenes drawn with
    held_out_colours take the colours a prompt leaves open from all colours ("four triangles" may hold a green one),
    while every training scene, the VQ's included, forbids them: such objects are out of the training distribution."""
    return any((o.color, o.shape) in HELD_OUT_PAIRS for o in scene.objects)


def held_out_split(hits: dict) -> dict:
    """{False: [bool], True: [bool]} (keyed by holds_held_out_pair) -> n and accuracy (pooled over tags) of each."""
    return {name: {"n": len(hits[key]), "accuracy": float(np.mean(hits[key])) if hits[key] else None}
            for name, key in (("scenes_without_held_out_pairs", False), ("scenes_with_held_out_pairs", True))}


def score_texts(b, px: torch.Tensor, query: str, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each text's summed log-prob [M] and its length-normalised (geometric-mean) log-prob [M] under the
    understanding branch, for pixels px [M, 3, H, W] and one query."""
    tl = b.text_logprobs(px, query, texts)
    return (tl.logprobs * tl.mask).sum(1), reduce_logprobs(tl.logprobs, tl.mask, "geometric_mean").log()


@torch.no_grad()
def reconstruct(b, px: torch.Tensor) -> torch.Tensor:
    """Renderings px [B, 3, H, W] through the VQ (encode, quantize, decode), as pixels in [-1, 1]."""
    idx = b.model.model.vqmodel.encode(px).image_tokens.view(len(px), -1)
    return b.decode_images(idx).float().cpu()


@torch.no_grad()
def bench_vq(b, pairs: list[tuple[dict, object]]) -> dict:
    """The exact evaluator's verdicts on VQ reconstructions of the (metadata, scene) pairs, per tag and apart for
    scenes with and without a held-out pair, and how often transformers' encode() picks the training quantizer's code."""
    vq = b.model.model.vqmodel
    correct, agree, by_held_out = defaultdict(list), [], defaultdict(list)
    for s in tqdm(range(0, len(pairs), 64), desc="vq"):
        chunk = pairs[s:s + 64]
        px = to_pixels([render(sc) for _, sc in chunk])
        # the library's own encode() path (unit codes make it agree with training), then decode
        idx = vq.encode(px).image_tokens.view(len(chunk), -1)
        agree.append((idx == quantize(vq, px)[2]).float().mean().item())  # library encode vs training quantizer
        rec = to_uint8(b.decode_images(idx))
        for (m, sc), img in zip(chunk, rec):
            ok = evaluate_image(m, img).correct
            correct[m["tag"]].append(ok)
            by_held_out[holds_held_out_pair(sc)].append(ok)
    return {**summarise(correct), **held_out_split(by_held_out),
            "encode_agrees_with_training_quantizer": float(np.mean(agree))}


@torch.no_grad()
def bench_understanding(b, pairs: list[tuple[dict, object]], seed: int, recon: bool = False,
                        per_prompt: list | None = None) -> dict:
    """Caption choice (true prompt among 3 minimal edits) and how often the true prompt beats each kind of edit.
    recon=True scores VQ reconstructions of the renderings (the decoder's pixels, what the reward's judge sees).
    per_prompt: a list that gets (metadata, chosen right) for every scene."""
    rng = random.Random(seed)
    hits_sum, hits_mean, by_kind, by_held_out = defaultdict(list), defaultdict(list), defaultdict(list), defaultdict(list)
    for m, sc in tqdm(pairs, desc="understanding" + (" (recon)" if recon else "")):
        ds = distractors(m, sc, 3, rng)
        texts = [m["prompt"]] + [d["prompt"] for d in ds]
        px = to_pixels([render(sc)])
        px = (reconstruct(b, px) if recon else px).repeat(len(texts), 1, 1, 1)
        total, mean = score_texts(b, px, REWARD_QUERY, texts)
        right = bool(total.argmax() == 0)
        hits_sum[m["tag"]].append(right)
        if per_prompt is not None:
            per_prompt.append((m, right))
        hits_mean[m["tag"]].append(bool(mean.argmax() == 0))
        by_held_out[holds_held_out_pair(sc)].append(right)
        for i, d in enumerate(ds, start=1):
            by_kind[d["perturbation"]].append(bool(total[0] > total[i]))
    return {"choose_1_of_4_sum_logp": {**summarise(hits_sum), **held_out_split(by_held_out)},
            "choose_1_of_4_mean_logp": summarise(hits_mean),
            "true_beats_edit_by_kind": {k: float(np.mean(v)) for k, v in by_kind.items()}}


@torch.no_grad()
def question_reading(b, n_scenes: int, seed: int) -> dict:
    """Two-object train scenes whose objects differ in colour and shape. For each object: "What color is the
    <shape>?" (answer chosen by likelihood among the colours) and "Is there a <colour> <shape>?" for that object and
    for a pair not in the scene. A model that reads the question answers the two colour questions differently and
    puts more weight on "yes" for the present pair: reported as colour accuracy, how often both objects get the same
    colour, the mean largest log-prob change between the two questions, and the ROC-AUC of log p(yes) - log p(no)
    for present against absent pairs."""
    rng = random.Random(seed)
    right, same, shift, yes_present, yes_absent = [], [], [], [], []
    while len(same) < n_scenes:
        _, scene = train_scene(rng)
        objs = scene.objects
        if len(objs) != 2 or objs[0].color == objs[1].color or objs[0].shape == objs[1].shape:
            continue
        px = to_pixels([render(scene)])
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
            "exists_auc_present_vs_absent": auc(yes_present + yes_absent,
                                                [True] * len(yes_present) + [False] * len(yes_absent))}


@torch.no_grad()
def relation_reading(b, per_prompt: int, seed: int) -> dict:
    """For the position prompts of the eval and the train split, per_prompt fresh scenes each: how often the true
    prompt out-scores its mirror (relation flipped) by log p(prompt | image), split by whether the mirror is a train
    prompt. The split holds out prompt texts, so for many eval prompts the model trained on the mirrored text only."""
    rng = random.Random(seed)
    out = {}
    for split in ("eval", "train"):
        prompts = list({m["prompt"]: m for m in make_suite("geneval", split, seed=0) if m["tag"] == "position"}.values())
        wins = defaultdict(list)
        for m in prompts:
            mirror = perturb(m, "relation", rng)
            group = "mirror is a train prompt" if mirror_is_train(m, "geneval") else "mirror is not a train prompt"
            for _ in range(per_prompt):
                px = to_pixels([render(sample_scene(m, rng))]).repeat(2, 1, 1, 1)
                total, _ = score_texts(b, px, REWARD_QUERY, [m["prompt"], mirror["prompt"]])
                wins[group].append(bool(total[0] > total[1]))
                wins["all"].append(wins[group][-1])
        out[split] = {"prompts": len(prompts),
                      **{g: {"true_beats_mirror": float(np.mean(v)), "n": len(v)} for g, v in sorted(wins.items())}}
    return out
