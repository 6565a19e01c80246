"""Is the understanding branch a usable teacher? ROC-AUC of the GvU reward for "the exact evaluator says this
generated image is correct", over images the model itself generated for eval-split prompts, overall and per tag;
also per reduction (geometric_mean, product, min) and within prompt groups (what GRPO actually uses).

Usage: python -m benchmarks.reward_auc [--model models/nano-janus] [--prompts 553] [--images 4] [--cfg-scale S] [--seed N] [--dump tokens.npz]

--dump saves the per-token log-probs, token ids, verdicts and tags, plus each prompt's per-token log-probs under
a blank grey image (a text-only prior), so token-weighting variants can be studied without regenerating
(experiments/token_weighting.py reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch
from tqdm import tqdm

from gvu.config import REDUCTIONS, RewardConfig, SamplingConfig
from gvu.measure import auc
from gvu.models.janus import JanusBackend
from gvu.reward import blank_image_logprobs, gvu_reward, reduce_logprobs, to_uint8
from gvu.world.evaluator import evaluate_image
from gvu.world.prompts import make_suite


@torch.no_grad()
def dump_tokens(path, b, md, images, lp, mk, ids, y, partial, tags) -> None:
    """Save what token-weighting studies need; the prior is each prompt scored under a blank grey image."""
    prior = torch.zeros(len(md), lp.shape[1])
    tl, row = blank_image_logprobs(b, [m["prompt"] for m in md], RewardConfig().query)  # one row per distinct prompt
    prior[:, : tl.logprobs.shape[1]] = tl.logprobs.cpu()[row]
    vocab = {int(i): b.tokenizer.decode([int(i)]) for i in ids[mk].unique()}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    np.savez_compressed(path, logprobs=lp.numpy(), mask=mk.numpy(), token_ids=ids.numpy(), correct=y,
                        partial=partial, tags=tags, images_per_prompt=images,
                        prior=np.repeat(prior.numpy(), images, axis=0),
                        vocab_ids=np.array(list(vocab)), vocab_text=np.array(list(vocab.values())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/nano-janus")
    ap.add_argument("--prompts", type=int, default=None)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (AUCs match within sampling noise, not bit for bit)")
    ap.add_argument("--seed", type=int, default=2024,
                    help="sampling seed of the first chunk of 64 images (chunk k uses seed + 64k); 2024 gave every "
                         "number in the README, another value draws other images of the same prompts")
    ap.add_argument("--out", default=None)
    ap.add_argument("--dump", default=None, help="save per-token log-probs etc. to this .npz")
    ap.add_argument("--cfg-scale", type=float, default=None,
                    help="guidance of the generated images (> 1; default: the backend's, 3 for nano-Janus; 1.01 is "
                         "the nano training preset's, almost none)")
    args = ap.parse_args()
    try:
        SamplingConfig(cfg_scale=args.cfg_scale).validate()  # a bad scale fails here, before the model loads
    except ValueError as e:
        ap.error(f"--cfg-scale: {e}")
    torch.set_num_threads(args.threads)
    t0 = time.time()
    b = JanusBackend.from_pretrained(args.model, device=args.device)
    md = make_suite("geneval", "eval", seed=0)[: args.prompts]
    rows = [m for m in md for _ in range(args.images)]
    lps, masks, ids, correct, partial = [], [], [], [], []
    for s in tqdm(range(0, len(rows), 64), desc="generate + score"):
        chunk = rows[s:s + 64]
        texts = [m["prompt"] for m in chunk]
        px = b.decode_images(b.sample_image_tokens(texts, SamplingConfig(cfg_scale=args.cfg_scale, seed=args.seed + s)))
        tl = gvu_reward(b, px, texts, RewardConfig()).token_logprobs
        width = 48
        lp = torch.zeros(len(chunk), width)
        mk = torch.zeros(len(chunk), width, dtype=torch.bool)
        tid = torch.zeros(len(chunk), width, dtype=torch.long)
        k = tl.logprobs.shape[1]
        lp[:, :k], mk[:, :k], tid[:, :k] = tl.logprobs.cpu(), tl.mask.cpu(), tl.token_ids.cpu()
        lps.append(lp)
        masks.append(mk)
        ids.append(tid)
        verdicts = [evaluate_image(m, img) for m, img in zip(chunk, to_uint8(px))]
        correct += [v.correct for v in verdicts]
        partial += [v.partial for v in verdicts]
    lp, mk, y = torch.cat(lps), torch.cat(masks), np.array(correct)
    tags = np.array([m["tag"] for m in rows])
    res = {"images": len(rows), "correct_rate": float(y.mean()), "cfg_scale": args.cfg_scale or b.default_cfg_scale,
           "seed": args.seed}
    for red in REDUCTIONS:
        r = reduce_logprobs(lp, mk, red).numpy()
        per_tag = {t: auc(r[tags == t], y[tags == t]) for t in sorted(set(tags))}
        groups = r.reshape(-1, args.images), y.reshape(-1, args.images)
        within = [auc(gr, gy) for gr, gy in zip(*groups)]
        within = [w for w in within if w is not None]
        res[red] = {"auc": auc(r, y), "per_tag": per_tag,
                    "within_group_auc": float(np.mean(within)) if within else None, "mixed_groups": len(within)}
    res["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} threads, {args.device}"
    res["wall_s"] = round(time.time() - t0, 1)
    print(json.dumps(res, indent=1))
    print("\n| reduction | ROC-AUC (all) | within-group AUC | " + " | ".join(sorted(set(tags))) + " |")
    print("|---|---|---|" + "---|" * len(set(tags)))
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for red in REDUCTIONS:
        x = res[red]
        print(f"| {red} | {fmt(x['auc'])} | {fmt(x['within_group_auc'])} ({x['mixed_groups']} groups) | "
              + " | ".join(fmt(x["per_tag"][t]) for t in sorted(set(tags))) + " |")
    if args.dump:
        dump_tokens(args.dump, b, md, args.images, lp, mk, torch.cat(ids), y, np.array(partial), tags)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "auc.json"), "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
