"""Rewards with one signature: (images, prompts) -> RewardOutput.

gvu     the paper's intrinsic reward. The understanding branch reads each decoded image with the query
        ("Describe the image in detail.") and scores the prompt as its answer, teacher-forced in one batched
        pass: per-token log p_j = log p(T_j | image, query, T_<j). Reductions over the L prompt tokens:
          geometric_mean  exp(mean_j log p_j)   (the paper's, default)
          product         exp(sum_j log p_j)    (the joint likelihood, no length normalisation)
          min             exp(min_j log p_j)    (the worst-supported token)
        The official code runs one forward per prompt token, one image at a time, and multiplies raw
        probabilities before the L-th root; here it is one pass in log space (equal within 1e-5, tested).
        token_weights="surprisal" (ours, not the paper's) makes geometric_mean a weighted mean: token j weighs
        -log q_j, its log-prob when the same judge reads the prompt under a blank mid-grey image. Template words
        the text alone predicts ("a photo of") then count for little, and the words an image can get wrong count
        most. A per-prompt prior cannot simply be subtracted instead: sum_j log q_j is the same for every image of
        a group, so group-normalised advantages would not change. `python -m experiments.token_weighting` measures
        what it does to the within-group ROC-AUC; it costs one extra pass per distinct prompt.
oracle  the nano world's exact evaluator: 1 when the image is correct, else the fraction of the prompt's
        constraints it meets. For comparisons only: it is the labelled reward GvU does without.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from gvu.config import RewardConfig
from gvu.models.adapter import TokenLogprobs, UnifiedModel


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # [M] float32
    token_logprobs: TokenLogprobs | None = None  # [M, L] per-token diagnostics (gvu reward only)
    correct: torch.Tensor | None = None  # [M] bool, exact-evaluator verdicts (oracle only)
    token_weights: torch.Tensor | None = None  # [M, L] per-token weights (token_weights="surprisal" only)


def pad_columns(x: torch.Tensor, width: int, value) -> torch.Tensor:
    """[M, L] -> [M, width] (width >= L), the new columns on the right filled with value."""
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


def concat_rewards(parts: list[RewardOutput]) -> RewardOutput:
    """The RewardOutputs of consecutive row blocks (rollout's micro-batches) as one, rows in order: every field
    concatenated along M. Per-token fields are left-aligned, so a block narrower than the widest L gets columns on
    the right: log-prob 0, mask False, token id 0 and weight 0, as the backends fill a row's unused columns (only
    the token-id filler differs: it is not the backend's pad id, and nothing reads ids where mask is False)."""
    if not parts:
        raise ValueError("no reward blocks to join")
    first = parts[0]
    for name in ("token_logprobs", "correct", "token_weights"):
        if any((getattr(p, name) is None) != (getattr(first, name) is None) for p in parts):
            raise ValueError(f"reward blocks disagree on whether they carry {name}")
    tls = [p.token_logprobs for p in parts]
    width = max(t.mask.shape[1] for t in tls) if first.token_logprobs is not None else 0
    tl = None if first.token_logprobs is None else TokenLogprobs(
        torch.cat([pad_columns(t.logprobs, width, 0.0) for t in tls]),
        torch.cat([pad_columns(t.mask, width, False) for t in tls]),
        torch.cat([pad_columns(t.token_ids, width, 0) for t in tls]))
    return RewardOutput(
        torch.cat([p.rewards for p in parts]), tl,
        None if first.correct is None else torch.cat([p.correct for p in parts]),
        None if first.token_weights is None else torch.cat([pad_columns(p.token_weights, width, 0.0) for p in parts]))


def reduce_logprobs(logprobs: torch.Tensor, mask: torch.Tensor, reduction: str,
                    weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token log-probs [M, L] with mask [M, L] -> rewards [M] (see module docstring).

    weights [M, L] (>= 0, geometric_mean only): exp(sum_j w_j log p_j / sum_j w_j) over the masked tokens."""
    mask = mask.bool()
    if not mask.any(dim=1).all():
        raise ValueError("every row needs at least one scored token")
    lp = logprobs.float().masked_fill(~mask, 0.0)
    if weights is not None:
        if reduction != "geometric_mean":
            raise ValueError(f"token weights apply to geometric_mean only, not {reduction!r}")
        w = weights.float().masked_fill(~mask, 0.0)
        return torch.exp((w * lp).sum(1) / w.sum(1))
    if reduction == "geometric_mean":
        return torch.exp(lp.sum(1) / mask.sum(1))
    if reduction == "product":
        return torch.exp(lp.sum(1))
    if reduction == "min":
        return torch.exp(logprobs.float().masked_fill(~mask, float("inf")).min(1).values)
    raise ValueError(f"unknown reduction {reduction!r}; choose geometric_mean, product or min")


@torch.no_grad()
def gvu_reward(judge: UnifiedModel, pixels: torch.Tensor, prompts: list[str], cfg: RewardConfig) -> RewardOutput:
    """pixels [M, 3, H, W] in [-1, 1], M prompts -> rewards [M] and per-token log-probs [M, L]."""
    tl = judge.text_logprobs(pixels, cfg.query, prompts)
    weights = surprisal_weights(judge, prompts, cfg.query, tl) if cfg.token_weights == "surprisal" else None
    return RewardOutput(reduce_logprobs(tl.logprobs, tl.mask, cfg.reduction, weights).cpu(), tl,
                        token_weights=None if weights is None else weights.cpu())


SURPRISAL_FLOOR = 1e-6  # so a prompt the text alone predicts fully still averages all its tokens equally


def blank_image_logprobs(judge: UnifiedModel, prompts: list[str], query: str) -> tuple[TokenLogprobs, torch.Tensor]:
    """The judge's per-token log-probs of each distinct prompt under a blank mid-grey image (a text-only prior),
    and for every row of `prompts` the index of its distinct prompt."""
    distinct = list(dict.fromkeys(prompts))
    blank = torch.zeros(len(distinct), 3, judge.image_size, judge.image_size)
    row = {p: i for i, p in enumerate(distinct)}
    return judge.text_logprobs(blank, query, distinct), torch.tensor([row[p] for p in prompts])


def surprisal_weights(judge: UnifiedModel, prompts: list[str], query: str, tl: TokenLogprobs) -> torch.Tensor:
    """-log q_j per prompt token, q from blank_image_logprobs, [M, L] aligned with tl. One pass per distinct
    prompt; rows of one group share it."""
    prior, idx = blank_image_logprobs(judge, prompts, query)
    q = prior.logprobs[idx.to(prior.logprobs.device)].to(tl.logprobs.device)  # same prompts, so the same width
    return (-q).clamp_min(SURPRISAL_FLOOR).masked_fill(~tl.mask.bool(), 0.0)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[M, 3, H, W] in [-1, 1] -> uint8 [M, H, W, 3]."""
    x = ((pixels.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def oracle_reward(pixels: torch.Tensor, metadata: list[dict], workers: int = 0) -> RewardOutput:
    """The exact evaluator as a reward (nano world only): 1 if correct, else the fraction of constraints met.
    workers > 1 evaluates in that many processes (gvu.world.evaluator.evaluate_images; the same values)."""
    from gvu.world.evaluator import evaluate_images

    judgements = evaluate_images(metadata, to_uint8(pixels), workers)
    return RewardOutput(torch.tensor([j.partial for j in judgements], dtype=torch.float32),
                        correct=torch.tensor([j.correct for j in judgements]))


class Judge:
    """Whose understanding branch scores the images (RewardConfig.judge), recorded in every run.

    policy  the live model being trained (what the official GvU code effectively does);
    frozen  the weights at the start of training (under LoRA: the base model with adapters disabled; otherwise a copy);
    ema     an exponential moving average of the policy's weights, updated once per training step (after its mu updates).
    """

    def __init__(self, policy, cfg: RewardConfig, adapter_off=None):
        """adapter_off: under LoRA, a context-manager factory that disables the adapters (peft's disable_adapter)."""
        self.policy, self.mode, self.decay = policy, cfg.judge, cfg.ema_decay
        self.copy = None
        self.adapter_off = adapter_off if cfg.judge == "frozen" else None
        if cfg.judge in ("frozen", "ema") and self.adapter_off is None:
            self.copy = copy.copy(policy)  # the backend object; its model is replaced by a frozen deep copy
            self.copy.model = copy.deepcopy(policy.model).eval().requires_grad_(False)

    def score(self, pixels: torch.Tensor, prompts: list[str], cfg: RewardConfig) -> RewardOutput:
        if self.adapter_off is not None:
            with self.adapter_off():
                return gvu_reward(self.policy, pixels, prompts, cfg)
        return gvu_reward(self.copy or self.policy, pixels, prompts, cfg)

    def _moving(self):
        """(name, judge parameter, policy parameter) for the policy's trainable parameters: the only ones an EMA
        judge can differ in (the frozen rest, e.g. a LoRA base model, equals the policy's from the start)."""
        for (name, pj), pp in zip(self.copy.model.named_parameters(), self.policy.model.parameters(), strict=True):
            if pp.requires_grad:
                yield name, pj, pp

    @torch.no_grad()
    def update(self) -> None:
        """After a training step: move the EMA judge towards the policy (no-op for policy and frozen)."""
        if self.mode != "ema":
            return
        for _, pj, pp in self._moving():
            pj.lerp_(pp.detach().to(pj.dtype), 1 - self.decay)

    def ema_tensors(self) -> dict[str, torch.Tensor] | None:
        """The EMA judge's state for a checkpoint ("ema." + name; trainable parameters only, so under LoRA the
        adapters' size, not a second base model), or None when the judge has no state of its own."""
        if self.mode != "ema":
            return None
        return {"ema." + name: pj for name, pj, _ in self._moving()}

    @torch.no_grad()
    def load_ema_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore ema_tensors() (checkpoints that saved every parameter load too: the frozen ones are skipped)."""
        moving = list(self._moving())
        missing = [name for name, _, _ in moving if "ema." + name not in tensors]
        if missing:
            raise ValueError(f"the checkpoint holds no EMA judge state for {len(missing)} trainable parameters (e.g. "
                             f"{missing[0]}); was it written by a run with another judge or LoRA setting?")
        for name, pj, _ in moving:
            pj.copy_(tensors["ema." + name])


def compute_reward(cfg: RewardConfig, judge: Judge | None, pixels: torch.Tensor, metadata: list[dict],
                   evaluator_workers: int = 0) -> RewardOutput:
    """Dispatch on cfg.kind; metadata has one entry per image row. evaluator_workers: see oracle_reward."""
    if cfg.kind == "oracle":
        return oracle_reward(pixels, metadata, evaluator_workers)
    return judge.score(pixels, [m["prompt"] for m in metadata], cfg)
