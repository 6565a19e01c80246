"""Learning-rate schedules, the one set `gvu train` and `gvu pretrain` use. Pure functions of the step (0-based):

  warmup   lr(step) = base * (step + 1) / warmup                        for step < warmup
  cosine   lr(step) = base * (1 + cos(pi * (step - warmup) / max(1, total - warmup))) / 2   after it
  constant lr(step) = base                                               after it

The warmup's first step already trains (base / warmup, not 0), and cosine reaches 0 at step == total, one past the
last step, so the last step's rate is small but not zero.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, base: float, total: int, warmup: int = 0, kind: str = "cosine") -> float:
    """The rate of step `step` of `total` under schedule `kind` (one of SCHEDULES) after `warmup` linear steps."""
    if step < warmup:
        return base * (step + 1) / warmup
    if kind == "cosine":
        return base * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    if kind == "constant":
        return base
    raise ValueError(f"schedule {kind!r}: give one of {', '.join(SCHEDULES)}")
