"""Scripted experts: each reaches its calibrated return, and returns actions the env takes.

Thresholds: mean return over 5 episodes (5 env copies, seed 100), calibrated over seeds 100, 200
and 300, whose worst means were CartPole 500, Pendulum -161, MountainCar -121.4 and FetchReach
-2.2 (success 1.0); each threshold leaves a margin below the worst."""

import pytest
import torch

from rung.buffers.demos import collect
from rung.envs import experts
from rung.envs.experts import EXPERTS, get_expert
from rung.errors import UserError


@pytest.mark.parametrize("env_id, threshold", [
    ("CartPole-v1", 475.0),
    ("Pendulum-v1", -250.0),
    ("MountainCar-v0", -130.0),
    ("FetchReach-v4", -5.0),
])
def test_expert_reaches_its_calibrated_return(env_id, threshold):
    if env_id.startswith("Fetch"):
        pytest.importorskip("gymnasium_robotics")
    traj = collect(env_id, get_expert(env_id), 5, seed=100, num_envs=5)
    assert traj.mean_return >= threshold
    if env_id.startswith("Fetch"):
        assert traj.success_rate >= 0.8


@pytest.mark.parametrize("env_id, obs_dim, shape, dtype", [
    ("CartPole-v1", 4, (7,), torch.int64),
    ("Pendulum-v1", 3, (7, 1), torch.float32),
    ("MountainCar-v0", 2, (7,), torch.int64),
    ("FetchReach-v4", 16, (7, 4), torch.float32),
])
def test_expert_actions_have_the_env_shape_and_bounds(env_id, obs_dim, shape, dtype):
    actions = EXPERTS[env_id](torch.randn(7, obs_dim) * 3)
    assert actions.shape == shape and actions.dtype == dtype
    if dtype == torch.float32:
        bound = 2.0 if env_id == "Pendulum-v1" else 1.0
        assert actions.abs().max() <= bound


def test_pendulum_holds_upright_and_kicks_from_rest():
    upright = experts.pendulum(torch.tensor([[1.0, 0.0, 0.0]]))
    hanging = experts.pendulum(torch.tensor([[-1.0, 0.0, 0.0]]))
    assert upright.item() == 0.0 and abs(hanging.item()) == 2.0


def test_fetch_reach_moves_towards_the_goal():
    obs = torch.zeros(1, 16)
    obs[0, 10:13] = torch.tensor([1.0, 1.0, 1.0])  # achieved
    obs[0, 13:16] = torch.tensor([1.01, 0.5, 1.0])  # desired
    assert torch.allclose(experts.fetch_reach(obs), torch.tensor([[0.1, -1.0, 0.0, 0.0]]), atol=1e-5)


def test_get_expert():
    assert get_expert("batched/CartPole-v1") is experts.cartpole
    with pytest.raises(UserError, match="no scripted expert for 'Acrobot-v1'; experts exist for CartPole-v1, Pendulum-v1"):
        get_expert("Acrobot-v1")
