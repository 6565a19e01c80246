"""Configuration dataclasses: the single home of every default. Each field says what it is for.

Model-specific numbers (image tokens, default guidance scale, image size, pad ids, chat template) are not here:
they belong to the backend (gvu/models/janus.py: JanusBackendConfig).
"""

from __future__ import annotations

from dataclasses import dataclass

REDUCTIONS = ("geometric_mean", "product", "min")
JUDGES = ("policy", "frozen", "ema")
REWARD_KINDS = ("gvu", "oracle")


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and how to fix it."""


@dataclass(frozen=True)
class SamplingConfig:
    """How rollout samples image tokens."""

    cfg_scale: float | None = None  # classifier-free guidance u + s (c - u); None: the backend's default; must be > 1 for Janus
    temperature: float = 1.0  # softmax temperature on the guided logits
    top_k: int = 0  # keep the k most likely tokens; 0 disables
    top_p: float = 1.0  # nucleus sampling; 1.0 disables
    min_p: float = 0.0  # drop tokens whose probability is below min_p x the top probability (official GvU: 0.03)
    seed: int = 0  # rollout RNG seed; the same seed and inputs give the same tokens

    def validate(self) -> None:
        if self.cfg_scale is not None and self.cfg_scale <= 1:
            raise ConfigError(f"cfg_scale must be > 1 (got {self.cfg_scale}); for almost no guidance use 1.01")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0 (got {self.temperature})")
        if self.top_k < 0:
            raise ConfigError(f"top_k must be >= 0 (got {self.top_k}); 0 disables it")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (got {self.top_p}); 1 disables it")
        if not 0 <= self.min_p < 1:
            raise ConfigError(f"min_p must be in [0, 1) (got {self.min_p}); 0 disables it")


@dataclass(frozen=True)
class RewardConfig:
    """The reward: GvU's intrinsic understanding reward, or the nano world's exact evaluator (for comparisons)."""

    kind: str = "gvu"  # "gvu" (the paper's) or "oracle" (exact evaluator; nano world only)
    query: str = "Describe the image in detail."  # the paper's query to the understanding branch
    reduction: str = "geometric_mean"  # per-token log p -> reward: geometric_mean = exp(mean log p) (paper), product = exp(sum), min
    judge: str = "policy"  # whose understanding scores: "policy" (live model, as the official code does), "frozen" (start weights), "ema"
    ema_decay: float = 0.99  # for judge="ema": judge <- decay * judge + (1 - decay) * policy after every update

    def validate(self) -> None:
        if self.kind not in REWARD_KINDS:
            raise ConfigError(f"reward kind must be one of {REWARD_KINDS} (got {self.kind!r})")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reward reduction must be one of {REDUCTIONS} (got {self.reduction!r})")
        if self.judge not in JUDGES:
            raise ConfigError(f"reward judge must be one of {JUDGES} (got {self.judge!r})")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in [0, 1) (got {self.ema_decay})")
        if not self.query.strip():
            raise ConfigError("the reward query must not be empty")
