"""Imitation losses (behaviour cloning, TD3+BC's actor loss) against numbers worked out by hand."""

import math

import pytest
import torch

from rung.objectives import bc_discrete_loss, bc_gaussian_nll_loss, bc_mse_loss, td3_bc_actor_loss

T = torch.tensor
LOG_2PI = math.log(2 * math.pi)


def test_bc_discrete_loss_is_cross_entropy_from_logits_or_logprobs():
    # logits (0, ln 3): probabilities 1/4 and 3/4.
    logits = T([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])
    actions = T([1, 0])
    loss, stats = bc_discrete_loss(logits, actions)
    assert torch.allclose(loss, T([math.log(4 / 3), math.log(4.0)]))
    assert stats["accuracy"] == pytest.approx(0.5)  # argmax is action 1 for both rows
    # CategoricalHead hands over log-probabilities; the loss is the same.
    assert torch.allclose(bc_discrete_loss(torch.log_softmax(logits, -1), actions)[0], loss)


def test_bc_gaussian_nll_sums_over_action_dims():
    mean, log_std, actions = T([[0.0, 1.0]]), T([0.0, math.log(2.0)]), T([[1.0, 1.0]])
    loss, stats = bc_gaussian_nll_loss(mean, log_std, actions)
    # dim 0: z = 1, sigma = 1 -> 1/2 + 0 + log(2 pi)/2; dim 1: z = 0, sigma = 2 -> 0 + ln 2 + log(2 pi)/2.
    assert torch.allclose(loss, T([0.5 + math.log(2.0) + LOG_2PI]))
    assert stats["mse"] == pytest.approx(1.0) and stats["std"] == pytest.approx(1.5)
    # It is the negative log-density of torch's Normal, summed over dims.
    ref = -torch.distributions.Normal(mean, log_std.exp()).log_prob(actions).sum(-1)
    assert torch.allclose(loss, ref)


def test_bc_gaussian_nll_gradient_pulls_the_mean_to_the_action():
    mean = T([[0.0]], requires_grad=True)
    bc_gaussian_nll_loss(mean, T([0.0]), T([[2.0]]))[0].sum().backward()
    assert mean.grad.item() == pytest.approx(-2.0)  # d/dmu (a - mu)^2 / 2 = -(a - mu)


def test_bc_mse_is_the_squared_distance_and_half_the_unit_std_nll():
    pred, actions = T([[1.0, 2.0], [0.0, 0.0]]), T([[0.0, 0.0], [0.0, 3.0]])
    loss, stats = bc_mse_loss(pred, actions)
    assert torch.allclose(loss, T([5.0, 9.0]))
    assert stats["mse"] == pytest.approx(7.0)
    nll, _ = bc_gaussian_nll_loss(pred, torch.zeros(2), actions)
    assert torch.allclose(nll, 0.5 * loss + LOG_2PI)  # two dims of log(2 pi)/2


def test_td3_bc_actor_loss_by_hand():
    q = T([2.0, -4.0], requires_grad=True)
    pi = T([[0.5, 0.0], [0.0, 0.0]], requires_grad=True)
    data = T([[0.5, 1.0], [1.0, 1.0]])
    loss, stats = td3_bc_actor_loss(q, pi, data, alpha=3.0)
    # lambda = 3 / mean(|2|, |-4|) = 1. BC term averaged over the 2 action dims: (0 + 1)/2, (1 + 1)/2.
    assert torch.allclose(loss, T([-2.0 + 0.5, 4.0 + 1.0]))
    assert stats["lambda"] == pytest.approx(1.0) and stats["bc_mse"] == pytest.approx(0.75)
    assert stats["actor_q"] == pytest.approx(-1.0)
    loss.sum().backward()
    # lambda is a constant: dL/dq = -lambda for each sample, no term through mean|Q|.
    assert torch.allclose(q.grad, T([-1.0, -1.0]))
    # d/dpi of mean_d (pi - a)^2 = 2 (pi - a) / 2.
    assert torch.allclose(pi.grad, T([[0.0, -1.0], [-1.0, -1.0]]))


def test_td3_bc_takes_a_global_q_scale_and_alpha_zero_is_pure_cloning():
    q, pi, data = T([2.0, -4.0]), T([[0.0], [1.0]]), T([[1.0], [1.0]])
    # A global mean|Q| of 6 (other processes' samples included) gives lambda 0.5 here.
    loss, stats = td3_bc_actor_loss(q, pi, data, alpha=3.0, q_abs_mean=T(6.0))
    assert torch.allclose(loss, T([-1.0 + 1.0, 2.0 + 0.0])) and stats["lambda"] == pytest.approx(0.5)
    loss0, _ = td3_bc_actor_loss(q, pi, data, alpha=0.0)
    assert torch.allclose(loss0, T([1.0, 0.0]))
