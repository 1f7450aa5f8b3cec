"""Batched envs against gymnasium itself: from the same state and the same actions, observations,
rewards, terminations and truncations agree to 1e-5 in float64 over 500 steps; plus auto-reset,
truncation, randomisation and state round-trips."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rung.envs import batched
from rung.errors import UserError

N = 4


def set_gym_state(env, state):
    env.unwrapped.state = np.array(state, dtype=np.float64)


def gym_state(env):
    return np.asarray(env.unwrapped.state, dtype=np.float64)


@pytest.mark.parametrize("name", list(batched.ENVS))
def test_dynamics_match_gymnasium_over_500_steps(name):
    benv = batched.make(name, N, seed=0, dtype=torch.float64)
    genvs = [gym.make(name) for _ in range(N)]
    benv.reset()
    for i, g in enumerate(genvs):
        g.reset(seed=100 + i)
        benv.state[i] = torch.as_tensor(gym_state(g))
    rng = np.random.default_rng(0)
    for t in range(500):
        if benv.discrete:
            actions = rng.integers(0, benv.action_dim, size=N)
            b_act = torch.as_tensor(actions)
        else:
            actions = rng.uniform(benv.action_low, benv.action_high, size=(N, benv.action_dim))
            b_act = torch.as_tensor(actions)
        step = benv.step(b_act)
        for i, g in enumerate(genvs):
            obs, reward, term, trunc, _ = g.step(actions[i] if benv.discrete else actions[i].astype(np.float32))
            msg = f"{name} env {i} step {t}"
            assert bool(step.terminated[i]) == term, msg
            assert bool(step.truncated[i]) == (trunc and not term), msg
            assert step.reward[i].item() == pytest.approx(reward, abs=1e-5), msg
            b_obs = step.final_obs[i] if (term or trunc) else step.obs[i]
            np.testing.assert_allclose(b_obs.numpy(), obs, atol=1e-5, err_msg=msg)
            if term or trunc:
                # Both reset; the batched env takes gymnasium's new initial state.
                g.reset(seed=1000 * t + i)
                benv.state[i] = torch.as_tensor(gym_state(g))


def test_auto_reset_truncation_and_episode_statistics():
    env = batched.make("Pendulum-v1", 3, seed=1)
    env.reset()
    total = torch.zeros(3, dtype=torch.float64)
    for t in range(200):
        step = env.step(torch.zeros(3, 1))
        total += step.reward.double()
    # Pendulum never terminates; the time limit cuts every env at step 200, and they restart.
    assert step.truncated.all() and not step.terminated.any()
    assert step.episode_length.tolist() == [200, 200, 200]
    torch.testing.assert_close(step.episode_return, total, rtol=1e-5, atol=1e-3)
    assert not torch.equal(step.final_obs, step.obs)
    assert (env.elapsed == 0).all()


def test_cartpole_terminates_and_resets_per_env():
    env = batched.make("CartPole-v1", 8, seed=0)
    env.reset()
    seen_done = torch.zeros(8, dtype=torch.bool)
    for _ in range(30):
        step = env.step(torch.ones(8, dtype=torch.long))
        seen_done |= step.terminated
        assert (step.obs[step.terminated].abs() <= 0.05).all()  # fresh initial states
    assert seen_done.all()


def test_randomisation_ranges_respected_and_resampled_per_episode():
    env = batched.make("CartPole-v1", 256, seed=0, randomize={"pole_length": (0.4, 0.6), "gravity": (9.0, 10.6)})
    env.reset()
    first = env.params["pole_length"].clone()
    assert ((first >= 0.4) & (first <= 0.6)).all() and first.std() > 0.03
    assert ((env.params["gravity"] >= 9.0) & (env.params["gravity"] <= 10.6)).all()
    assert (env.params["cart_mass"] == 1.0).all()  # not randomised
    changed_where_done = torch.zeros(256, dtype=torch.bool)
    for _ in range(40):
        before = env.params["pole_length"].clone()
        step = env.step(torch.ones(256, dtype=torch.long))
        after = env.params["pole_length"]
        assert torch.equal(after[~step.done], before[~step.done])  # mid-episode: unchanged
        changed_where_done |= step.done & (after != before)
    assert changed_where_done.sum() > 200
    assert ((env.params["pole_length"] >= 0.4) & (env.params["pole_length"] <= 0.6)).all()


def test_randomise_errors():
    with pytest.raises(UserError, match="no parameter 'pole_size'"):
        batched.make("CartPole-v1", 2, randomize={"pole_size": (1, 2)})
    with pytest.raises(UserError, match="NAME=LOW:HIGH"):
        batched.parse_randomize("gravity=9")
    assert batched.parse_randomize("pole_length=0.4:0.6, gravity=9:10.6") == {"pole_length": (0.4, 0.6), "gravity": (9.0, 10.6)}
    with pytest.raises(UserError, match="did you mean batched/CartPole-v1"):
        batched.make("CartPol-v1", 2)


@pytest.mark.parametrize("name, key, bounds, message", [
    ("CartPole-v1", "pole_length", (0.0, 1.0), "pole_length must be > 0"),   # divides the dynamics: NaN states
    ("Pendulum-v1", "mass", (-1.0, 1.0), "mass must be > 0"),
    ("Pendulum-v1", "max_torque", (-1.0, 1.0), "max_torque must be > 0"),    # a torque forced to one side
    ("CartPole-v1", "gravity", (-1.0, 9.8), "gravity must be >= 0"),
])
def test_unphysical_randomisation_ranges_are_refused(name, key, bounds, message):
    with pytest.raises(UserError, match=message):
        batched.make(name, 2, randomize={key: bounds})


def test_gravity_may_be_randomised_down_to_zero():
    env = batched.make("CartPole-v1", 4, seed=0, randomize={"gravity": (0.0, 1.0)})
    env.reset()
    assert torch.isfinite(env.step(torch.ones(4, dtype=torch.long)).obs).all()


def test_pendulum_max_torque_above_the_action_bound_is_refused():
    # Actions are clipped to the action space (+-2) before the per-env cap, so a range past 2
    # would silently train on torques of at most 2.
    with pytest.raises(UserError, match="max_torque above 2.0 has no effect"):
        batched.make("Pendulum-v1", 2, randomize={"max_torque": (1.5, 3.0)})
    env = batched.make("Pendulum-v1", 2, seed=0, randomize={"max_torque": (1.0, 1.0)}, dtype=torch.float64)
    env.reset()
    state = env.state.clone()
    env.step(torch.full((2, 1), 2.0))
    after_two = env.state.clone()
    env.state = state.clone()
    env.step(torch.full((2, 1), 1.0))
    assert torch.allclose(env.state, after_two)  # a torque of 2 is capped to the env's 1


def test_state_round_trip_continues_identically():
    env = batched.make("Acrobot-v1", 16, seed=3, normalize_obs=True)
    env.reset()
    for _ in range(10):
        env.step(torch.randint(0, 3, (16,)))
    state = env.state_dict()
    actions = [torch.randint(0, 3, (16,)) for _ in range(20)]
    ref = [env.step(a) for a in actions]
    other = batched.make("Acrobot-v1", 16, seed=99, normalize_obs=True)
    other.reset()
    other.load_state_dict(state)
    for a, r in zip(actions, ref):
        s = other.step(a)
        assert torch.equal(s.obs, r.obs) and torch.equal(s.reward, r.reward)


def test_a_state_from_another_kind_of_device_resumes_with_a_generator_seeded_from_it():
    # A CUDA generator's state is 16 bytes, a CPU one's 5,056: set_state would raise. The episodes
    # go on, and later draws are the same on every resume of the same state.
    env = batched.make("CartPole-v1", 8, seed=3)
    env.reset()
    for _ in range(30):
        env.step(torch.randint(0, 2, (8,)))
    state = env.state_dict()
    state["generator"] = torch.arange(16, dtype=torch.uint8)  # what a CUDA generator's state looks like
    runs = []
    for _ in range(2):
        other = batched.make("CartPole-v1", 8, seed=7)
        other.reset()
        assert other.load_state_dict(state) is True and torch.equal(other.state, env.state)
        runs.append([other.step(torch.ones(8, dtype=torch.long)).obs for _ in range(40)])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_reset_clears_the_reward_normalisers_running_return():
    env = batched.make("Pendulum-v1", 4, seed=0, normalize_reward=True)
    env.reset()
    for _ in range(20):
        env.step(torch.ones(4, 1))
    assert (env.normalizer.returns != 0).all()
    env.reset()
    assert (env.normalizer.returns == 0).all()


def test_a_state_for_other_env_counts_renormalises_the_current_observation():
    env = batched.make("CartPole-v1", 8, seed=3, normalize_obs=True)
    env.reset()
    for _ in range(300):
        env.step(torch.randint(0, 2, (8,)))
    other = batched.make("CartPole-v1", 4, seed=5, normalize_obs=True)
    other.reset()  # normalised by statistics of its 4 reset states alone
    assert other.load_state_dict(env.state_dict()) is False  # 8 envs saved, 4 here: they keep their episodes
    raw = other.observe(other.state)
    rms = env.normalizer.obs_rms
    want = ((raw - rms.mean) / torch.sqrt(rms.var + env.normalizer.eps)).clamp(-10, 10).float()
    assert torch.allclose(other.last_obs, want, atol=1e-5)
