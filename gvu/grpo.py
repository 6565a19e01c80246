"""GRPO's math as pure functions (no model code). Shapes: B prompts, G images per prompt, M = B*G rows,
N image tokens. Semantics follow TRL's GRPOTrainer (option names, k3 KL, advantage scaling); structure does not.

  advantages   A_i = (r_i - mean_group) / (std + eps), std over the group (paper), the batch, or none (Dr.GRPO)
  policy term  -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A),  rho = exp(log pi - log pi_old) per token
  KL (k3)      exp(log pi_ref - log pi) - (log pi_ref - log pi) - 1  (Schulman's unbiased, non-negative estimator)
  aggregation  sequence_mean (GRPO: mean over a sequence's tokens, then over sequences), token_mean (DAPO: over all
               tokens of the batch), constant (Dr.GRPO: sum / (M * N_max), no length bias)
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")
AGGREGATIONS = ("sequence_mean", "token_mean", "constant")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """rewards [B*G] (rows of one prompt adjacent) -> advantages [B*G]. std is the unbiased one (as TRL)."""
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be [B*G] with G={group_size}, got {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(1, keepdim=True)
    if scale == "group":
        centred = centred / (r.std(1, keepdim=True) + eps)
    elif scale == "batch":
        centred = centred / (rewards.float().std() + eps)
    elif scale != "none":
        raise ValueError(f"unknown advantage scale {scale!r}; choose one of {SCALES}")
    return centred.view(-1)


def zero_variance_groups(rewards: torch.Tensor, group_size: int, tol: float = 1e-8) -> int:
    """How many groups have (near) equal rewards: they carry no learning signal."""
    r = rewards.float().view(-1, group_size)
    return int(((r.max(1).values - r.min(1).values) <= tol).sum())


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                        eps_low: float = 0.2, eps_high: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token clipped surrogate loss [M, N] and whether each token was clipped [M, N]."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a
    return -torch.minimum(unclipped, clipped), (clipped < unclipped)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) [M, N]; >= 0, zero when the two agree."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "sequence_mean") -> torch.Tensor:
    """[M, N] per-token values with mask [M, N] -> scalar loss."""
    mask = mask.to(per_token.dtype)
    if mode == "sequence_mean":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if mode == "token_mean":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if mode == "constant":
        return (per_token * mask).sum() / (per_token.shape[0] * per_token.shape[1])
    raise ValueError(f"unknown loss aggregation {mode!r}; choose one of {AGGREGATIONS}")


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
              ref_logp: torch.Tensor | None = None, beta: float = 0.0, eps_low: float = 0.2, eps_high: float = 0.2,
              aggregation: str = "sequence_mean") -> tuple[torch.Tensor, dict]:
    """The full GRPO objective and its diagnostics. logp is differentiable [M, N]; the rest are constants."""
    per_token, was_clipped = clipped_policy_loss(logp, old_logp.detach(), adv.detach(), eps_low, eps_high)
    metrics = {"policy/clip_fraction": aggregate(was_clipped.float(), mask, "token_mean").item(),
               "policy/ratio_mean": aggregate(torch.exp(logp - old_logp).detach(), mask, "token_mean").item()}
    if beta > 0:
        if ref_logp is None:
            raise ValueError("beta > 0 needs reference log-probs")
        kl = k3_kl(logp, ref_logp.detach())
        per_token = per_token + beta * kl
        metrics["policy/kl"] = aggregate(kl.detach(), mask, "token_mean").item()
    return aggregate(per_token, mask, aggregation), metrics
