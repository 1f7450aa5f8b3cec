import numpy as np
import pytest
import torch

from rung.envs import env_threshold, make_env
from rung.envs.wrappers import Normalizer, RunningMeanStd
from rung.errors import UserError


def test_unknown_env_suggests_close_ids():
    with pytest.raises(UserError, match="did you mean CartPole-v1"):
        make_env("CartPole-v9", 1, 0)


def test_step_shapes_and_episode_statistics():
    env = make_env("CartPole-v1", 3, seed=0)
    obs = env.reset()
    assert obs.shape == (3, 4) and obs.dtype == torch.float32
    assert env.discrete and env.action_dim == 2
    seen = []
    raw_sum = np.zeros(3)
    for _ in range(60):
        step = env.step(torch.ones(3, dtype=torch.long))  # always push right: falls in ~10 steps
        raw_sum += step.reward.numpy()
        if step.done.any():
            ended = torch.nonzero(step.done).squeeze(-1).tolist()
            assert step.episode_return[ended].tolist() == [raw_sum[i] for i in ended]
            raw_sum[ended] = 0
            seen += step.episode_return[ended].tolist()
            # The final observation is kept apart from the reset observation.
            assert not torch.equal(step.final_obs[ended], step.obs[ended])
        assert torch.equal(step.final_obs[~step.done], step.obs[~step.done])
    assert len(seen) >= 3 and all(r == len_ for r, len_ in zip(seen, seen))


def test_truncation_is_not_termination():
    env = make_env("CartPole-v1", 2, seed=0, env_kwargs={"max_episode_steps": 5})
    env.reset()
    steps = [env.step(torch.tensor([0, 1])) for _ in range(5)]
    assert not any(s.terminated.any() for s in steps[:4])
    assert steps[4].truncated.all() and not steps[4].terminated.any()
    assert steps[4].episode_length.tolist() == [5, 5]


def test_continuous_actions_are_clipped_for_the_env_only():
    env = make_env("Pendulum-v1", 2, seed=0)
    env.reset()
    assert not env.discrete and env.action_dim == 1
    step = env.step(torch.tensor([[100.0], [-100.0]]))  # far outside [-2, 2]: must not raise
    assert step.reward.shape == (2,)


def test_running_mean_std_merges_batches_exactly():
    data = np.random.default_rng(0).normal(3.0, 2.0, size=(1000, 3))
    rms = RunningMeanStd((3,), epsilon=0.0)
    rms.count = 0.0
    for chunk in np.array_split(data, 7):
        if rms.count == 0:
            rms.mean, rms.var, rms.count = chunk.mean(0), chunk.var(0), len(chunk)
        else:
            rms.update(chunk)
    np.testing.assert_allclose(rms.mean, data.mean(0))
    np.testing.assert_allclose(rms.var, data.var(0))


def test_reward_normalisation_divides_by_return_std():
    norm = Normalizer((1,), 2, obs=False, reward=True, gamma=0.9)
    r = norm.reward(np.array([1.0, 2.0]), np.array([False, True]))
    expected = np.array([1.0, 2.0]) / np.sqrt(norm.ret_rms.var + norm.eps)
    np.testing.assert_allclose(r, expected)
    # The running discounted return is reset where an episode ended.
    assert norm.returns.tolist() == [1.0, 0.0]


def test_normalizer_state_round_trip_and_freeze():
    norm = Normalizer((2,), 1, obs=True, reward=False, gamma=0.99)
    norm.obs(np.array([[1.0, 2.0], [3.0, 5.0]]))
    other = Normalizer((2,), 1, obs=True, reward=False, gamma=0.99)
    other.load_state_dict(norm.state_dict())
    x = np.array([[2.0, 2.0]])
    np.testing.assert_allclose(other.obs(x, update=False), norm.obs(x, update=False))
    other.frozen = True
    before = other.state_dict()["obs_rms"]["mean"].copy()
    other.obs(np.array([[100.0, 100.0]]))
    np.testing.assert_array_equal(other.state_dict()["obs_rms"]["mean"], before)


def test_env_state_restores_mid_episode():
    env = make_env("CartPole-v1", 2, seed=3, normalize_obs=True)
    env.reset()
    for _ in range(7):
        env.step(torch.tensor([0, 1]))
    state = env.state_dict()
    actions = [torch.tensor([i % 2, 1 - i % 2]) for i in range(30)]
    ref = [env.step(a) for a in actions]
    restored = make_env("CartPole-v1", 2, seed=99, normalize_obs=True)
    restored.reset()
    restored.load_state_dict(state)
    for a, r in zip(actions, ref):
        s = restored.step(a)
        assert torch.equal(s.obs, r.obs) and torch.equal(s.reward, r.reward)
        assert torch.equal(s.episode_return[s.done], r.episode_return[r.done])


def test_thresholds():
    assert env_threshold("CartPole-v1") == 475
    assert env_threshold("Pendulum-v1") == -200
    assert env_threshold("Nope-v0") is None
