"""Small pure helpers that the measurement scripts (benchmarks/, experiments/) share: the per-tag accuracy summary
every nano-world table reports, the ROC-AUC that the reward analyses report, and the name of the CPU a number was
measured on (printed beside it)."""

from __future__ import annotations

import platform

import numpy as np


def summarise(correct: dict[str, list[bool]]) -> dict:
    """{tag: [verdict per image]} -> {"per_tag": {tag: accuracy}, "overall": the mean of the per-tag accuracies
    (GenEval's overall score: every tag weighs the same), "pooled": accuracy over all images, "n": images}."""
    per_tag = {t: float(np.mean(v)) for t, v in sorted(correct.items())}
    return {"per_tag": per_tag, "overall": float(np.mean(list(per_tag.values()))),
            "pooled": float(np.mean([x for v in correct.values() for x in v])),
            "n": sum(len(v) for v in correct.values())}


def auc(scores, labels) -> float | None:
    """Mann-Whitney ROC-AUC: P(a positive scores above a negative), ties counting half; None when one class is
    absent. scores [M] float, labels [M] bool."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if len(pos) == 0 or len(neg) == 0:
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine() or "unknown CPU"
