"""GRPO math against numbers worked out by hand."""

import math

import pytest
import torch

from gvu.grpo import aggregate, clipped_policy_loss, group_advantages, grpo_loss, k3_kl, zero_variance_groups


def test_group_advantages_by_hand():
    # group 1: rewards 1, 3 -> mean 2, unbiased std sqrt(2) -> -/+ 1/sqrt(2); group 2: 5, 5 -> 0, 0
    adv = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2, "group", eps=1e-12)
    assert torch.allclose(adv[:2], torch.tensor([-1 / math.sqrt(2), 1 / math.sqrt(2)]))
    assert torch.equal(adv[2:], torch.zeros(2))
    # no scaling: just centred; batch scaling: divided by the batch std of [1, 3, 5, 5] = sqrt(11/3)
    assert torch.allclose(group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2, "none"), torch.tensor([-1.0, 1.0, 0, 0]))
    b = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), 2, "batch", eps=0.0)
    assert torch.allclose(b, torch.tensor([-1.0, 1.0, 0, 0]) / math.sqrt(11 / 3))


def test_zero_variance_groups_are_counted():
    assert zero_variance_groups(torch.tensor([1.0, 1.0, 0.2, 0.3, 0.5, 0.5]), 2) == 2


def test_clipped_loss_by_hand():
    # ratio e^0.5 = 1.6487 with A = +1: clipped to 1.2 -> loss -1.2 (clipped);
    # ratio e^-0.5 = 0.6065 with A = +1: min(0.6065, 0.8) = 0.6065 -> loss -0.6065 (not clipped);
    # ratio e^0.5 with A = -1: min(-1.6487, -1.2) = -1.6487 -> loss 1.6487 (not clipped)
    logp = torch.tensor([[0.5], [-0.5], [0.5]])
    loss, clipped = clipped_policy_loss(logp, torch.zeros(3, 1), torch.tensor([1.0, 1.0, -1.0]), 0.2, 0.2)
    assert torch.allclose(loss.flatten(), torch.tensor([-1.2, -math.exp(-0.5), math.exp(0.5)]), atol=1e-6)
    assert clipped.flatten().tolist() == [True, False, False]
    # separate high epsilon: 1 + 0.28 caps the ratio at 1.28
    loss_hi, _ = clipped_policy_loss(logp[:1], torch.zeros(1, 1), torch.tensor([1.0]), 0.2, 0.28)
    assert loss_hi.item() == pytest.approx(-1.28)


def test_k3_kl_by_hand():
    # d = log pi_ref - log pi = log 0.5 - log 0.25 = log 2: e^d - d - 1 = 2 - 0.693147 - 1 = 0.306853
    kl = k3_kl(torch.log(torch.tensor([[0.25, 0.4]])), torch.log(torch.tensor([[0.5, 0.4]])))
    assert torch.allclose(kl, torch.tensor([[2 - math.log(2) - 1, 0.0]]), atol=1e-6)


def test_aggregations_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert aggregate(x, mask, "sequence_mean").item() == pytest.approx((2.0 + 4.0) / 2)  # means 2 and 4
    assert aggregate(x, mask, "token_mean").item() == pytest.approx(10.0 / 4)
    assert aggregate(x, mask, "constant").item() == pytest.approx(10.0 / 6)  # M * N_max = 2 * 3


def test_on_policy_loss_is_minus_mean_advantage_and_its_gradient_is_the_policy_gradient():
    # mu = 1: old = logp (detached), ratio 1, loss = -mean_i A_i, d loss / d logp_ij = -A_i / (M N)
    logp = torch.zeros(2, 2, requires_grad=True)
    adv = torch.tensor([1.0, -0.5])
    loss, m = grpo_loss(logp, logp.detach(), adv, torch.ones(2, 2))
    assert loss.item() == pytest.approx(-(1.0 - 0.5) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -0.25], [0.125, 0.125]]))
    assert m["policy/clip_fraction"] == 0.0


def test_kl_term_adds_beta_times_k3():
    logp = torch.log(torch.tensor([[0.25]]))
    ref = torch.log(torch.tensor([[0.5]]))
    loss, m = grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 1), ref, beta=0.1)
    assert loss.item() == pytest.approx(0.1 * (2 - math.log(2) - 1), abs=1e-6)
    assert m["policy/kl"] == pytest.approx(2 - math.log(2) - 1, abs=1e-6)
