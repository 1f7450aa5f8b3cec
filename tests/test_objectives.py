import math

import pytest
import torch

from rung.objectives import discounted_returns, entropy_loss, gae, normalize, ppo_clip_loss, reinforce_loss, value_loss

T = torch.tensor


def episode_inputs():
    """Five steps of one env: an episode that terminates at t=1, then one cut by the time limit
    at t=3 (V(final obs) = 2), then one still running at the rollout's end (bootstrap V = 4).
    next_values[1] = 9 must be ignored: that step terminated."""
    rewards = T([[1.0], [2.0], [3.0], [4.0], [5.0]])
    values = torch.ones(5, 1)
    next_values = T([[1.0], [9.0], [1.0], [2.0], [4.0]])
    terminated = T([[False], [True], [False], [False], [False]])
    truncated = T([[False], [False], [False], [True], [False]])
    return rewards, values, next_values, terminated, truncated


def test_gae_by_hand_termination_and_truncation():
    rewards, values, next_values, terminated, truncated = episode_inputs()
    adv, ret = gae(rewards, values, next_values, terminated, truncated, gamma=0.5, lam=0.5)
    # deltas: 0.5, 1, 2.5, 4, 6; A4=6, A3=4 (episode cut), A2=2.5+0.25*4, A1=1 (terminal), A0=0.5+0.25*1
    assert adv.squeeze(1).tolist() == pytest.approx([0.75, 1.0, 3.5, 4.0, 6.0])
    assert ret.squeeze(1).tolist() == pytest.approx([1.75, 2.0, 4.5, 5.0, 7.0])


def test_discounted_returns_by_hand():
    rewards, _, next_values, terminated, truncated = episode_inputs()
    ret = discounted_returns(rewards, next_values, terminated, truncated, gamma=0.5)
    # G4 = 5 + .5*4; G3 = 4 + .5*2 (V(final obs)); G2 = 3 + .5*G3; G1 = 2 (terminal); G0 = 1 + .5*G1
    assert ret.squeeze(1).tolist() == pytest.approx([2.0, 2.0, 5.5, 5.0, 7.0])


def gae_loop(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Plain per-element reference."""
    Tn, N = rewards.shape
    adv = torch.zeros(Tn, N)
    for i in range(N):
        running = 0.0
        for t in reversed(range(Tn)):
            boot = 0.0 if terminated[t, i] else next_values[t, i].item()
            delta = rewards[t, i].item() + gamma * boot - values[t, i].item()
            cont = 0.0 if (terminated[t, i] or truncated[t, i]) else 1.0
            running = delta + gamma * lam * cont * running
            adv[t, i] = running
    return adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    shape = (17, 5)
    rewards, values, nv = (torch.randn(shape, generator=g) for _ in range(3))
    done = torch.rand(shape, generator=g) < 0.2
    term = done & (torch.rand(shape, generator=g) < 0.5)
    trunc = done & ~term
    adv, ret = gae(rewards, values, nv, term, trunc, 0.97, 0.9)
    torch.testing.assert_close(adv, gae_loop(rewards, values, nv, term, trunc, 0.97, 0.9))
    torch.testing.assert_close(ret, adv + values)
    # Monte-Carlo returns are GAE with lambda = 1 when next_values are the values of the next
    # stored observation within an episode (as RolloutStorage.next_values builds them).
    nv = torch.where(done, nv, torch.cat([values[1:], nv[-1:]]))
    _, ret1 = gae(rewards, values, nv, term, trunc, 0.97, 1.0)
    torch.testing.assert_close(discounted_returns(rewards, nv, term, trunc, 0.97), ret1)


def test_ppo_clip_loss_by_hand():
    ratios = T([1.5, 0.5, 1.1])
    adv = T([1.0, 1.0, -2.0])
    loss, stats = ppo_clip_loss(ratios.log(), torch.zeros(3), adv, clip_coef=0.2)
    # min(1.5*1, 1.2*1) = 1.2; min(0.5*1, 0.8*1) = 0.5; min(1.1*-2, 1.1*-2) = -2.2; negated
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 2.2])
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1))) / 3
    assert stats["approx_kl"].item() == pytest.approx(kl, rel=1e-5)


def test_ppo_clip_gradient_is_zero_when_clipped():
    logp = T([math.log(1.5)], requires_grad=True)
    loss, _ = ppo_clip_loss(logp, torch.zeros(1), T([1.0]), 0.2)
    loss.sum().backward()
    assert logp.grad.item() == 0.0


def test_value_loss_plain_and_clipped():
    loss, _ = value_loss(T([2.0, 1.2]), T([3.0, 3.0]))
    assert loss.tolist() == pytest.approx([1.0, 3.24])
    # 2.0 is clipped to 1.0 + 0.5 = 1.5, whose error is larger: the pessimistic max takes it.
    loss, _ = value_loss(T([2.0, 1.2]), T([3.0, 3.0]), old_values=T([1.0, 1.0]), clip_coef=0.5)
    assert loss.tolist() == pytest.approx([2.25, 3.24])


def test_reinforce_and_entropy_losses():
    loss, _ = reinforce_loss(T([-0.5, -2.0]), T([2.0, -1.0]))
    assert loss.tolist() == pytest.approx([1.0, -2.0])
    loss, stats = entropy_loss(T([0.3, 0.7]))
    assert loss.tolist() == pytest.approx([-0.3, -0.7])
    assert stats["entropy"].item() == pytest.approx(0.5)


def test_normalize_uses_given_statistics():
    assert normalize(T([1.0, 3.0]), 2.0, 1.0, eps=0.0).tolist() == [-1.0, 1.0]
