"""Where does a nano-Janus lose spatial relations? Linear probes on its own features, no training of the model.

The 4-way caption choice catches a mirrored relation ("left of" -> "right of") only about as often as chance, in every
stage-2 variant tried so far. This script asks which link of the chain drops the information:

  vision   does the aligned image feature of a patch (the language model's input) say where the patch is? And the
           vision encoder's output before the aligner?
           A least-squares probe from each object patch's feature to its column and row, fitted on scenes of one
           half of the data and tested on the other (chance: 1/8). The same probes for the patch's colour and
           shape are a control: they say whether the feature lost everything or only position. And a probe from
           each object patch to where its object lies from the other one (left / right of it, above / below it;
           chance 1/2): what the relation probe (rel_weight) trains the encoder to say.
  lm       does the language model's hidden state, just before it must write the relation word, know the relation?
           For "a photo of a cross right of a circle" the state at "... a cross" is probed for the prompt's relation
           (left of / right of / above / below; chance 1/4), at every layer. Control: the same probe with every
           text paired with another scene's image, which keeps the text and removes the image's evidence.
  model    how often the model itself puts more probability on the true relation word than on its mirror, at that
           same position (what the caption choice measures for relation edits); also for left/right and
           above/below apart.

Prompts are train-split geneval position prompts ("a photo of a A <relation> a B") with freshly sampled scenes.

  --encoder random|VISION_PT   only the vision part, on a bare vision encoder: freshly initialised (random), or the
           one saved by pretraining stage 1b (OUT/vision.pt), with the model's vision config.

Usage: python -m experiments.relation_probe [--model models/nano-janus] [--scenes 1000] [--encoder ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time

import numpy as np
import torch

from gvu.models.janus import JanusBackend, left_pad
from gvu.models.pretrain import patch_labels, relation_labels, to_pixels, train_prompt
from gvu.world.captions import REWARD_QUERY
from gvu.world.prompts import MIRROR
from gvu.world.sampler import sample_scene
from gvu.world.scene import render
from gvu.world.vocab import COLOR_NAMES, SHAPES

RELATIONS = ("left of", "right of", "above", "below")


def ridge_accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, classes: int, lam: float = 1.0) -> float:
    """Least-squares probe onto one-hot targets (ridge lam), argmax; accuracy on the rows not in `train`."""
    x = np.concatenate([x, np.ones((len(x), 1), x.dtype)], 1)
    onehot = np.eye(classes)[y]
    a = x[train]
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ onehot[train])
    test = ~train
    return float(((x[test] @ w).argmax(1) == y[test]).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--scenes", type=int, default=1000)
    ap.add_argument("--encoder", default=None, help="random, or a stage-1b vision.pt: probe that encoder alone")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="write results.json here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    b = JanusBackend.from_pretrained(args.model)
    model = b.model.eval()
    rng = random.Random(args.seed)
    items = []  # (prompt text before the relation, relation, scene)
    while len(items) < args.scenes:
        _, m = train_prompt(rng, {"geneval": ("position",)})
        rel = m["include"][1]["position"][0]
        cut = m["prompt"].index(" " + rel + " ")
        items.append((m["prompt"][:cut], rel, sample_scene(m, rng)))
    y = np.array([RELATIONS.index(r) for _, r, _ in items])
    train = np.zeros(len(items), bool)
    train[: len(items) // 2] = True
    px = to_pixels([render(sc) for *_, sc in items])
    pv = b.pixel_values(px)
    grid = int(b.num_image_tokens ** 0.5)
    res = {"model": args.model, "scenes": len(items)}
    # [S, 3, N]: each patch's shape, colour and size class, 0 = background
    labels = np.stack([patch_labels(sc, grid).numpy() for *_, sc in items])
    lab = labels[:, 0]
    s_idx, p_idx = np.nonzero(lab)  # object patches only (an empty patch has nothing to locate)
    cols, rows = p_idx % grid, p_idx // grid
    patch_train = train[s_idx]
    # what is in an object patch, as a control: a feature that lost position may still say what the object is
    colours = labels[:, 1][s_idx, p_idx] - 1
    shapes = lab[s_idx, p_idx] - 1

    def probes(x: np.ndarray) -> dict:
        return {"column_acc": ridge_accuracy(x, cols, patch_train, grid),
                "row_acc": ridge_accuracy(x, rows, patch_train, grid),
                "colour_acc": ridge_accuracy(x, colours, patch_train, len(COLOR_NAMES)),
                "shape_acc": ridge_accuracy(x, shapes, patch_train, len(SHAPES))}

    if args.encoder:
        from transformers.models.janus.modeling_janus import JanusVisionModel

        from gvu.models.pretrain import _split_vision_state

        torch.manual_seed(args.seed)
        enc = JanusVisionModel(model.config.vision_config).eval()
        if args.encoder != "random":
            enc.load_state_dict(_split_vision_state(torch.load(args.encoder, weights_only=True, map_location="cpu")["model"])["vision"])
        with torch.no_grad():
            x = enc(pv.float()).last_hidden_state.float().numpy()[s_idx, p_idx]
        res["encoder_only"] = {"encoder": args.encoder, **probes(x), "chance": 1 / grid}
        print(json.dumps(res, indent=1))
        e = res["encoder_only"]
        print(f"encoder {args.encoder}: object patch column {e['column_acc']:.3f}, row {e['row_acc']:.3f} "
              f"(chance {1 / grid:.3f}); colour {e['colour_acc']:.3f}, shape {e['shape_acc']:.3f}")
        save(res, args.out)
        return

    with torch.no_grad():
        feats = model.model.get_image_features(pv).pooler_output.float().numpy()  # [S, N, H], the LM's input
        encoder = model.model.vision_model(pv).last_hidden_state.float().numpy()  # before the aligner
    res["vision"] = {"object_patches": int(len(p_idx)), "chance": 1 / grid}
    # the relation of a patch's object to the other object (what the relation probe, rel_weight, trains the encoder
    # to say), on the patches whose object holds exactly one relation of the axis: left of / right of, above / below
    rel = np.stack([relation_labels(sc, grid).numpy() for *_, sc in items])  # [S, 4, N]
    for name, f in (("aligned", feats), ("encoder", encoder)):
        x = f[s_idx, p_idx]
        res["vision"][name] = probes(x)
        for axis, (a, c) in (("horizontal", (0, 1)), ("vertical", (2, 3))):
            ra, rc = rel[s_idx, a, p_idx], rel[s_idx, c, p_idx]
            one = (ra >= 0) & (ra + rc == 1)
            res["vision"][name][f"relation_{axis}_acc"] = (
                ridge_accuracy(x[one], (rc[one] == 1).astype(int), patch_train[one], 2) if one.any() else None)

    def lm_states(images: torch.Tensor):
        prefix = b._understanding_prefix(REWARD_QUERY)
        batch = left_pad([prefix + b.answer_ids(t) for t, *_ in items], b.ids["pad"])
        out = []
        for s in range(0, len(items), 64):
            with torch.no_grad():
                o = model.model(input_ids=batch.ids[s:s + 64], attention_mask=batch.mask[s:s + 64],
                                position_ids=batch.positions[s:s + 64], pixel_values=images[s:s + 64],
                                use_cache=False, output_hidden_states=True)
            logits = model.lm_head(o.last_hidden_state[:, -1]).float().log_softmax(-1)
            out.append(([h[:, -1].float().numpy() for h in o.hidden_states], logits))
        layers = [np.concatenate([o[0][k] for o in out]) for k in range(len(out[0][0]))]
        return layers, torch.cat([o[1] for o in out])

    layers, logp = lm_states(pv)
    shuffled, _ = lm_states(pv[torch.from_numpy(np.roll(np.arange(len(items)), 1))])
    res["lm"] = {"layers": len(layers) - 1, "chance": 0.25,
                 "relation_acc_by_layer": [ridge_accuracy(h, y, train, 4) for h in layers],
                 "relation_acc_by_layer_shuffled_images": [ridge_accuracy(h, y, train, 4) for h in shuffled]}
    # the model's own choice between the true relation word and its mirror (first token of each)
    first = lambda text: b.answer_ids(text)[0]  # noqa: E731
    true_tok = torch.tensor([first(r) for _, r, _ in items])
    mirror_tok = torch.tensor([first(MIRROR[r]) for _, r, _ in items])
    distinct = true_tok != mirror_tok
    rows_ = torch.arange(len(items))
    wins = (logp[rows_, true_tok] > logp[rows_, mirror_tok])[distinct]
    res["model"] = {"true_word_beats_mirror": float(wins.float().mean()), "pairs": int(distinct.sum())}
    # by axis: "left of"/"right of" are told apart by an object's column, "above"/"below" by its row
    rel_of = np.array([r for _, r, _ in items])[distinct.numpy()]
    for axis, names in (("horizontal", ("left of", "right of")), ("vertical", ("above", "below"))):
        sel = torch.from_numpy(np.isin(rel_of, names))
        res["model"][f"beats_mirror_{axis}"] = float(wins[sel].float().mean()) if sel.any() else None
    res["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    v, lm = res["vision"], res["lm"]
    for name in ("aligned", "encoder"):
        print(f"vision ({name}): object patch column {v[name]['column_acc']:.3f}, row {v[name]['row_acc']:.3f} "
              f"(chance {v['chance']:.3f}); colour {v[name]['colour_acc']:.3f}, shape {v[name]['shape_acc']:.3f}; "
              f"its object left/right of the other {v[name]['relation_horizontal_acc']:.3f}, above/below "
              f"{v[name]['relation_vertical_acc']:.3f} (chance 0.5)")
    print("lm, relation before its word, by layer (0 = embeddings): "
          + ", ".join(f"{a:.2f}" for a in lm["relation_acc_by_layer"])
          + "; images shuffled: " + ", ".join(f"{a:.2f}" for a in lm["relation_acc_by_layer_shuffled_images"]))
    mo = res["model"]
    print(f"model: true relation word beats its mirror {mo['true_word_beats_mirror']:.3f} "
          f"(left/right {mo['beats_mirror_horizontal']:.3f}, above/below {mo['beats_mirror_vertical']:.3f})")
    save(res, args.out)


def save(res: dict, out: str | None) -> None:
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
