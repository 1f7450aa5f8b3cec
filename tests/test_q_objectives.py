"""Off-policy targets and losses against numbers worked out by hand, and the networks they run on."""

import math

import pytest
import torch

from rung.nn.offpolicy import ObsNorm, QEnsemble, SquashedGaussianActor, polyak_update
from rung.objectives import (
    clipped_double_q_target,
    critic_ensemble_loss,
    deterministic_policy_loss,
    dqn_target,
    sac_policy_loss,
    smoothed_target_action,
    soft_q_target,
    td_loss,
    temperature_loss,
)

T = torch.tensor


def test_dqn_target_double_and_plain():
    next_q_target = T([[1.0, 3.0], [2.0, 0.0]])
    next_q_online = T([[5.0, 0.0], [0.0, 1.0]])
    rewards, terminated = T([1.0, 2.0]), T([0.0, 1.0])
    # Double: the online net picks a'=0 then a'=1; the target net values them 1 and 0.
    # Row 1 is terminal: no bootstrap.
    assert torch.allclose(dqn_target(next_q_target, rewards, terminated, 0.9, next_q_online), T([1.9, 2.0]))
    # Plain: max of the target net, 3 -> 1 + 0.9 * 3.
    assert torch.allclose(dqn_target(next_q_target, rewards, terminated, 0.9), T([3.7, 2.0]))


def test_td_loss_huber_and_mse():
    q, target = T([0.0, 3.0], requires_grad=True), T([0.5, 0.0])
    huber, stats = td_loss(q, target, "huber")
    assert torch.allclose(huber, T([0.125, 2.5]))  # 0.5 * 0.5^2 inside delta 1; |3| - 0.5 outside
    assert torch.allclose(td_loss(q, target, "mse")[0], T([0.25, 9.0]))
    assert stats["q"] == pytest.approx(1.5)


def test_critic_ensemble_loss_is_half_the_summed_per_critic_mse_and_leaves_the_target_alone():
    q = T([[1.0, 3.0], [0.0, 2.0]], requires_grad=True)
    target = T([2.0, 2.0], requires_grad=True)
    loss = critic_ensemble_loss(q, target)
    # Critic 0: errors -1, 1 -> MSE 1; critic 1: errors -2, 0 -> MSE 2; half the sum is 1.5.
    assert loss.item() == pytest.approx(1.5)
    loss.backward()
    # d/dq of 0.5 * mean over B of (q - t)^2 is (q - t) / B, per critic.
    assert torch.allclose(q.grad, T([[-0.5, 0.5], [-1.0, 0.0]]))
    assert target.grad is None


def test_clipped_double_q_target_takes_the_minimum_critic():
    next_qs = T([[1.0, 5.0], [2.0, 4.0]])  # (critics, batch)
    out = clipped_double_q_target(next_qs, T([0.0, 1.0]), T([0.0, 0.0]), 0.5)
    assert torch.allclose(out, T([0.5, 3.0]))  # min 1 -> 0.5 * 1; min 4 -> 1 + 0.5 * 4
    # One critic is DDPG's target.
    assert torch.allclose(clipped_double_q_target(next_qs[:1], T([0.0, 1.0]), T([0.0, 1.0]), 0.5), T([0.5, 1.0]))


def test_target_policy_smoothing_clips_noise_then_action():
    mu = T([0.9, -0.5, 0.0])
    noise = T([0.3, -0.8, 0.1])
    # Noise clipped to [-0.5, 0.5]: 0.3, -0.5, 0.1; then actions clipped to [-1, 1]: 1.0, -1.0, 0.1.
    assert torch.allclose(smoothed_target_action(mu, noise, 0.5, -1.0, 1.0), T([1.0, -1.0, 0.1]))


def test_soft_q_target_subtracts_the_entropy_term():
    next_qs = T([[1.0, 2.0], [3.0, 0.0]])
    out = soft_q_target(next_qs, T([0.5, -1.0]), 0.2, T([1.0, 1.0]), T([0.0, 1.0]), 0.9)
    # Row 0: 1 + 0.9 * (min(1, 3) - 0.2 * 0.5) = 1.81. Row 1 terminal: the reward alone.
    assert torch.allclose(out, T([1.81, 1.0]))


def test_actor_losses():
    assert torch.equal(deterministic_policy_loss(T([2.0, -1.0]))[0], T([-2.0, 1.0]))
    loss, stats = sac_policy_loss(T([2.0, -1.0]), T([-1.0, 0.5]), 0.5)
    assert torch.allclose(loss, T([-2.5, 1.25]))  # 0.5 * -1 - 2; 0.5 * 0.5 + 1
    assert stats["entropy"] == pytest.approx(0.25)


def test_temperature_falls_when_entropy_is_above_target():
    log_alpha = torch.tensor(math.log(2.0), requires_grad=True)
    logp = T([-2.0, 0.0])  # entropy estimate 1.0, above the target of -1
    loss, stats = temperature_loss(log_alpha, logp, target_entropy=-1.0)
    assert torch.allclose(loss, -math.log(2.0) * T([-3.0, -1.0]))
    loss.mean().backward()
    assert log_alpha.grad.item() == pytest.approx(2.0)  # -mean(logp + target) = 2 > 0: descent lowers alpha
    assert stats["alpha"] == pytest.approx(2.0)


def test_polyak_update():
    target, source = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    for p in target.parameters():
        torch.nn.init.zeros_(p)
    for p in source.parameters():
        torch.nn.init.ones_(p)
    polyak_update(target, source, 0.1)
    assert all(torch.allclose(p, torch.full_like(p, 0.1)) for p in target.parameters())
    polyak_update(target, source, 1.0)
    assert all(torch.equal(p, torch.ones_like(p)) for p in target.parameters())


@pytest.mark.parametrize("hidden", [(8, 8), ()])
def test_q_ensemble_equals_separate_critics_and_detach_params_spares_weights(hidden):
    torch.manual_seed(0)
    ens = QEnsemble(3, 2, hidden, n=2)
    obs, act = torch.randn(5, 3), torch.randn(5, 2, requires_grad=True)
    out = ens(obs, act)
    out.sum().backward()
    last = len(hidden)
    for i in range(2):
        ws = [w[i].detach().clone().requires_grad_() for w in ens.weights]
        bs = [b[i, 0].detach().clone().requires_grad_() for b in ens.biases]
        x = torch.cat([obs, act.detach()], -1)
        for j, (w, b) in enumerate(zip(ws, bs)):
            x = x @ w + b
            if j < last:
                x = torch.relu(x)
        assert torch.allclose(out[i], x.squeeze(-1), atol=1e-6)
        x.sum().backward()
        for mine, ref in zip([*ens.weights, *ens.biases], [*ws, *bs]):
            assert torch.allclose(mine.grad[i].reshape(ref.shape), ref.grad, atol=1e-6)
    act.grad = None
    ens.zero_grad(set_to_none=True)
    ens(obs, act, detach_params=True).sum().backward()
    assert act.grad is not None and all(p.grad is None for p in ens.parameters())


def test_squashed_gaussian_log_prob_matches_torch_distributions():
    from torch.distributions import Normal, TransformedDistribution
    from torch.distributions.transforms import TanhTransform

    torch.manual_seed(0)
    actor = SquashedGaussianActor(3, 2, (16,), low=T([-2.0, -1.0]), high=T([2.0, 3.0]))
    obs = torch.randn(64, 3)
    action, logp = actor(obs)
    assert ((action >= T([-2.0, -1.0])) & (action <= T([2.0, 3.0]))).all()
    h = actor.body(obs)
    dist = TransformedDistribution(Normal(actor.mean(h), actor.log_std(h).clamp(-20, 2).exp()), [TanhTransform()])
    unit = ((action - actor.bias) / actor.scale).clamp(-1 + 1e-6, 1 - 1e-6)
    assert torch.allclose(dist.log_prob(unit).sum(-1), logp, atol=1e-3)
    det, _ = actor(obs, deterministic=True)
    assert torch.allclose(det, torch.tanh(actor.mean(h)) * actor.scale + actor.bias)


def test_obs_norm_standardises_and_round_trips_through_state_dict():
    norm = ObsNorm(2, enabled=True)
    data = torch.randn(1000, 2) * T([3.0, 0.1]) + T([5.0, -1.0])
    norm.update(data)
    out = norm(data)
    assert torch.allclose(out.mean(0), torch.zeros(2), atol=1e-3) and torch.allclose(out.std(0), torch.ones(2), atol=1e-2)
    fresh = ObsNorm(2, enabled=True)
    fresh.load_state_dict(norm.state_dict())
    assert torch.equal(fresh(data), out) and fresh.rms.count == norm.rms.count
    assert torch.equal(ObsNorm(2, enabled=False)(data), data)
