"""Fine-tune a nano-Janus's understanding branch alone on one kind of row, and see what it learns.

A probe of what the model can pick up, not a recipe: the language model, the vision encoder and the aligner train
(AdamW, linear warm-up, then a constant rate) on rows of one or more kinds, and the VQ and the generation parts stay
as they are. Before and after, experiments.text_reading's relation measurement runs (true prompt against its
mirror on eval and train position prompts, split by whether the mirror is a train prompt), and its question one.

Row kinds (--rows, comma-separated; each row draws one kind at random):
  position           "Describe the image in detail." answered by a train-split GenEval position prompt of the scene
  balanced_position  the same, only prompts whose mirror is a train prompt too (PretrainConfig.balanced_relations)
  captions           the reward's query answered by a caption of a random train scene (pretraining's styles)
  questions          a question about a random train scene and its one-word answer

--rel-head vision|aligned adds pretraining's relation probe (PretrainConfig.rel_weight: a linear head that must say,
for each object patch of a two-object scene, which relations its object stands in to the other) on the vision
encoder's output or on the aligned features the language model reads, weighted by --rel-weight.

Usage: python -m experiments.understanding_finetune --rows balanced_position [--model models/nano-janus]
       [--steps 300] [--lr 1e-3] [--rel-head aligned] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gvu.models.janus import JanusBackend, text_logits
from gvu.models.janus_format import left_pad
from gvu.models.pretrain import (HELD_OUT_PAIRS, RelationProbe, bf16_is_native, relation_labels, to_pixels,
                                 train_prompt, train_scene)
from gvu.nano_eval import question_reading, relation_reading
from gvu.world.captions import REWARD_QUERY, describe
from gvu.world.captions import questions as ask
from gvu.world.sampler import sample_scene
from gvu.world.scene import render

ROWS = ("position", "balanced_position", "captions", "questions")


def make_row(kind: str, rng: random.Random):
    """-> (query, answer text, scene)."""
    if kind in ("position", "balanced_position"):
        _, m = train_prompt(rng, {"geneval": ("position",)}, balanced=kind == "balanced_position")
        return REWARD_QUERY, m["prompt"], sample_scene(m, rng, forbid=HELD_OUT_PAIRS)
    _, scene = train_scene(rng)
    if kind == "captions":
        return REWARD_QUERY, describe(scene, rng, rng.choice(("geneval", "geneval", "full", "partial"))), scene
    _, q, a = ask(scene, rng, 1)[0]
    return q, a, scene


def measure(b: JanusBackend, args) -> dict:
    b.model.eval()
    return {"relations": relation_reading(b, args.per_prompt, args.seed),
            "questions": question_reading(b, args.scenes, args.seed)}


def summary(r: dict) -> str:
    rel = r["relations"]
    return (f"eval {rel['eval']['all']['true_beats_mirror']:.3f} "
            f"(mirror train {rel['eval']['mirror is a train prompt']['true_beats_mirror']:.3f}), "
            f"train {rel['train']['all']['true_beats_mirror']:.3f}; questions: same colour for both objects "
            f"{r['questions']['both_objects_get_the_same_colour']:.3f}, exists AUC "
            f"{r['questions']['exists_auc_present_vs_absent']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--rows", required=True, help="comma-separated: " + ", ".join(ROWS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--per-prompt", type=int, default=6, help="scenes per position prompt when measuring")
    ap.add_argument("--scenes", type=int, default=100, help="two-object scenes for the question measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rel-head", choices=("none", "vision", "aligned"), default="none",
                    help="add the relation probe on the vision encoder's output or on the aligned features")
    ap.add_argument("--rel-weight", type=float, default=1.0)
    ap.add_argument("--measure-every", type=int, default=0, help="also measure every N steps (0: only at the end)")
    ap.add_argument("--out", default=None, help="write results.json here")
    ap.add_argument("--save", default=None, help="save the fine-tuned model directory here (loadable as --model)")
    args = ap.parse_args()
    kinds = args.rows.split(",")
    bad = [k for k in kinds if k not in ROWS]
    if bad:
        ap.error(f"--rows: unknown kind(s) {', '.join(bad)}; choose from {', '.join(ROWS)}")
    if args.steps < 1 or args.batch < 1 or not args.lr > 0:
        ap.error("--steps and --batch must be at least 1 and --lr above 0")
    if args.save:
        check_save(args.model, args.save)  # before the training, not after it
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.time()
    b = JanusBackend.from_pretrained(args.model)
    model = b.model
    eos = b.tokenizer.convert_tokens_to_ids(b.tokenizer.eos_token)
    res = {"model": args.model, "rows": kinds, "steps": args.steps, "lr": args.lr, "batch": args.batch,
           "before": measure(b, args)}
    print("before:", summary(res["before"]), flush=True)
    trained = [p for n, p in model.named_parameters() if not n.startswith(("model.vqmodel", "model.generation"))]
    feats, rel_probe = {}, None
    if args.rel_head != "none":
        aligner = model.model.aligner
        if args.rel_head == "vision":
            aligner.register_forward_pre_hook(lambda mod, a: feats.__setitem__("f", a[0]))
            width = model.config.vision_config.hidden_size
        else:
            aligner.register_forward_hook(lambda mod, a, out: feats.__setitem__("f", out))
            width = model.config.text_config.hidden_size
        rel_probe = RelationProbe(width)
        trained += list(rel_probe.parameters())
        res.update(rel_head=args.rel_head, rel_weight=args.rel_weight)
    grid = int(b.num_image_tokens ** 0.5)
    opt = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed + 1)
    bf16 = bf16_is_native("cpu")  # bf16 autocast only where the CPU has it in hardware (else far slower than fp32)
    losses, rel_accs = [], []
    for step in tqdm(range(1, args.steps + 1), desc="fine-tune"):
        model.train()
        rows = [make_row(rng.choice(kinds), rng) for _ in range(args.batch)]
        answers = [b.answer_ids(a) + [eos] for _, a, _ in rows]
        batch = left_pad([b._understanding_prefix(q) + a for (q, _, _), a in zip(rows, answers)], b.ids["pad"])
        labels = torch.full_like(batch.ids, -100)
        for i, a in enumerate(answers):
            labels[i, -len(a):] = batch.ids[i, -len(a):]
        pixels = b.pixel_values(to_pixels([render(sc) for *_, sc in rows]))
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, step / max(1, args.warmup))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = text_logits(model, batch, pixels)
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        losses.append(loss.item())  # the language-model loss alone
        if rel_probe is not None:
            rel_loss, acc = rel_probe(feats["f"].float(), torch.stack([relation_labels(sc, grid) for *_, sc in rows]))
            loss = loss + args.rel_weight * rel_loss
            if acc == acc:
                rel_accs.append(acc)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()
        if args.measure_every and step % args.measure_every == 0 and step < args.steps:
            res.setdefault("during", {})[step] = r = measure(b, args)
            tqdm.write(f"step {step}: {summary(r)}")
    res["loss_first_last_20"] = [sum(losses[:20]) / len(losses[:20]), sum(losses[-20:]) / len(losses[-20:])]
    if rel_accs:
        res["rel_acc_last_20"] = sum(rel_accs[-20:]) / len(rel_accs[-20:])
        print(f"relation head: accuracy {res['rel_acc_last_20']:.3f} (mean of its last 20 steps)")
    res["after"] = measure(b, args)
    res["wall_s"] = round(time.time() - t0, 1)
    print("after: ", summary(res["after"]))
    print(f"loss {res['loss_first_last_20'][0]:.3f} -> {res['loss_first_last_20'][1]:.3f}; {res['wall_s']:.0f} s")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(res, f, indent=1)
    if args.save:
        save_like(args.model, model, args.save)


def check_save(src: str, dst: str) -> None:
    if os.path.abspath(dst) == os.path.abspath(src):
        raise SystemExit(f"--save {dst} is the model it started from; give another directory")


def save_like(src: str, model, dst: str) -> None:
    """Save model's weights as a model directory beside a copy of src's other files (tokenizer, processor, backend
    settings), so that it loads as src does."""
    import shutil

    check_save(src, dst)
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if os.path.isfile(os.path.join(src, name)) and not name.endswith(".safetensors"):
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))
    model.save_pretrained(dst)


if __name__ == "__main__":
    main()
