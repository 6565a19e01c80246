"""Which prompt tokens should the GvU reward listen to? An offline study on dumped per-token log-probs.

The paper's reward averages log p over every prompt token, so template words ("a", "photo", "of") weigh as
much as the words an image can get wrong ("red", "three", "above"). This script re-reduces the same per-token
log-probs several ways and reports the ROC-AUC for "the exact evaluator says correct", over all images and
within each prompt's group (the comparison GRPO makes). No model runs: it reads the file that
`python -m benchmarks.reward_auc --dump FILE.npz` writes.

Variants (all label-free except `content_words`, which uses the nano world's vocabulary as a reference):
  geometric_mean     exp(mean_j log p_j), the paper's
  product, min       as in gvu.reward
  prior_mask@t       the mean over tokens whose text-only probability (prompt under a blank image) is below t
  surprisal_weighted mean of log p_j weighted by the token's text-only surprisal -log q_j
  pmi_min            min_j (log p_j - log q_j): the token the image supports least relative to the text alone
  content_words      the mean over colour, shape, count and relation words only (a vocabulary-aware reference)

Subtracting the prior inside a mean (sum_j log q_j is fixed for a prompt) changes no group-normalised
advantage, which is why only masking, weighting and the min appear here.

Usage: python -m experiments.token_weighting runs/auc-v3/tokens.npz
"""

from __future__ import annotations

import argparse

import numpy as np

from gvu.measure import auc
from gvu.world.vocab import COLORS, NUMBER_WORDS, RELATIONS, SHAPES


def masked_mean(lp: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted mean of log-probs per row; NaN for a row with no weight (callers fall back to the plain mean)."""
    total = w.sum(1)
    return np.where(total > 0, (lp * w).sum(1) / np.maximum(total, 1e-12), np.nan)


def variants(d) -> dict[str, np.ndarray]:
    lp, mk, prior = d["logprobs"], d["mask"].astype(bool), d["prior"]
    m = mk.astype(float)
    words = dict(zip(d["vocab_ids"].tolist(), (t.strip() for t in d["vocab_text"].tolist())))
    content = {*COLORS, *SHAPES, *(s + "s" for s in SHAPES), *NUMBER_WORDS.values(),
               *(w for r in RELATIONS for w in r.split() if w != "of")}
    is_content = np.vectorize(lambda i: words.get(int(i), "") in content)(d["token_ids"]) & mk
    plain = masked_mean(lp, m)
    out = {
        "geometric_mean": plain,
        "product": (lp * m).sum(1),
        "min": np.where(mk, lp, np.inf).min(1),
    }
    for t in (0.9, 0.5, 0.2):
        keep = mk & (np.exp(prior) < t)
        out[f"prior_mask@{t}"] = np.where(keep.any(1), masked_mean(lp, keep.astype(float)), plain)
    out["surprisal_weighted"] = masked_mean(lp, m * -prior)
    out["pmi_min"] = np.where(mk, lp - prior, np.inf).min(1)
    out["content_words"] = np.where(is_content.any(1), masked_mean(lp, is_content.astype(float)), plain)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tokens", help="the .npz file `python -m benchmarks.reward_auc --dump FILE.npz` writes")
    d = np.load(ap.parse_args().tokens)
    y, tags, g = d["correct"].astype(bool), d["tags"], int(d["images_per_prompt"])
    print(f"{len(y)} images, {y.mean():.3f} correct, groups of {g}")
    tag_names = sorted(set(tags.tolist()))
    print("\n| reward | ROC-AUC | within-group AUC | " + " | ".join(tag_names) + " |")
    print("|---|---|---|" + "---|" * len(tag_names))
    for name, r in variants(d).items():
        within = [auc(a, b) for a, b in zip(r.reshape(-1, g), y.reshape(-1, g))]
        within = [w for w in within if w is not None]
        per_tag = [auc(r[tags == t], y[tags == t]) for t in tag_names]
        print(f"| {name} | {auc(r, y):.3f} | {np.mean(within):.3f} ({len(within)}) | "
              + " | ".join("n/a" if v is None else f"{v:.3f}" for v in per_tag) + " |")


if __name__ == "__main__":
    main()
