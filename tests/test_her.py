import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from rung.buffers import HerReplayBuffer
from rung.envs import GymVecEnv
from rung.envs.make import check_env_id
from rung.errors import UserError

# A synthetic goal env whose goals say where they were reached: at absolute step t, env c's
# next_obs achieved goal is (c, t, 1), its obs achieved goal (c, t, 0); the desired goal
# (-1, -1, -1) is never reached, so every stored reward is -1.
PARTS = {"observation": slice(0, 2), "achieved_goal": slice(2, 5), "desired_goal": slice(5, 8)}


def fake_reward(achieved: torch.Tensor, desired: torch.Tensor) -> torch.Tensor:
    return -(torch.linalg.vector_norm(achieved - desired, dim=-1) > 0.05).float()


def synthetic(ep_lens, steps, *, capacity=1000, strategy="future", seed=0, buf=None, start=0):
    n = len(ep_lens)
    buf = buf or HerReplayBuffer(capacity, n, PARTS, 8, (1,), fake_reward, strategy=strategy, seed=seed,
                                 check_memory=False)
    col = torch.arange(n, dtype=torch.float32)
    for t in range(start, start + steps):
        tt = torch.full((n,), float(t))
        obs = torch.stack([col, tt, col, tt, torch.zeros(n), -torch.ones(n), -torch.ones(n), -torch.ones(n)], 1)
        nxt = obs.clone()
        nxt[:, 4] = 1
        done = torch.tensor([(t + 1) % L == 0 for L in ep_lens])
        buf.add(obs, tt[:, None], -torch.ones(n), nxt, torch.zeros(n), done)
    return buf


def where_from(batch):
    """(env, step) of each sampled transition and of the step its desired goal was taken from."""
    c, t = batch.obs[:, 0].long(), batch.obs[:, 1].long()
    goal = batch.obs[:, PARTS["desired_goal"]]
    return c, t, goal[:, 0].long(), goal[:, 1].long()


@pytest.mark.parametrize("strategy", ["future", "final", "episode"])
def test_relabelled_goals_come_from_the_same_episode(strategy):
    ep_lens = (3, 5, 7)
    buf = synthetic(ep_lens, 105, strategy=strategy)  # 105 = lcm: every episode complete
    batch = buf.sample(4000)
    relabelled = buf.last_relabelled
    c, t, gc, gt = where_from(batch)
    lens = torch.tensor(ep_lens)[c]
    ep_first = t // lens * lens

    assert torch.equal(batch.obs[:, 5:], batch.next_obs[:, 5:])  # the goal is replaced in both
    assert (batch.obs[~relabelled, 5:] == -1).all()
    assert (batch.obs[relabelled, 7] == 1).all()  # a next_obs achieved goal, not an obs one
    r = relabelled
    assert torch.equal(gc[r], c[r])
    assert (gt[r] >= ep_first[r]).all() and (gt[r] < ep_first[r] + lens[r]).all()
    if strategy == "future":
        assert (gt[r] >= t[r]).all() and (gt[r] > t[r]).any() and (gt[r] == t[r]).any()
    elif strategy == "final":
        assert torch.equal(gt[r], ep_first[r] + lens[r] - 1)
    else:
        assert (gt[r] < t[r]).any() and (gt[r] > t[r]).any()
    assert torch.equal(batch.rewards, fake_reward(batch.next_obs[:, 2:5], batch.next_obs[:, 5:]))
    assert (batch.rewards[r] == 0).any() and (batch.rewards[~r] == -1).all()


def test_relabelled_fraction_and_running_episodes():
    buf = synthetic((3, 5), 15)  # all complete
    buf.sample(1000)
    assert buf.last_relabelled.sum() == 800  # n_sampled_goal / (n_sampled_goal + 1) with 4
    buf = synthetic((3, 5), 2, buf=buf, start=15)  # steps 15, 16 are of running episodes
    batch = buf.sample(2000)
    _, t, _, _ = where_from(batch)
    assert not buf.last_relabelled[t >= 15].any()
    assert (t >= 15).any()  # still sampled, with their own goal
    assert buf.last_relabelled.float().mean().item() == pytest.approx(0.8 * 30 / 34, abs=0.03)


def test_overwritten_episode_is_no_longer_relabelled():
    # 10 rows hold steps 15..24. Env 0 (length 4): the episode 12..15 lost its first rows, 16..19
    # and 20..23 are whole, 24 runs. Env 1 (length 12): 12..23 lost its start, 24 runs.
    buf = synthetic((4, 12), 25, capacity=20)
    batch = buf.sample(3000)
    c, t, gc, gt = where_from(batch)
    r = buf.last_relabelled
    assert t.min() == 15 and t.max() == 24
    assert ((c[r] == 0) & (t[r] >= 16) & (t[r] <= 23)).all()
    assert (gt[r] >= 16).all() and (gt[r] // 4 == t[r] // 4).all()
    assert ((c == 0) & (t == 15)).any() and (c == 1).any()  # still sampled as plain transitions
    assert r.any()


def test_state_dict_continues_identically():
    buf = synthetic((3, 5), 13, capacity=20, seed=3)  # wrapped, episodes mid-way
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    restored = HerReplayBuffer(20, 2, PARTS, 8, (1,), fake_reward, check_memory=False)
    restored.load_state_dict(torch.load(blob))
    for b in (buf, restored):
        b.sample(64)
        synthetic((3, 5), 9, buf=b, start=13)
    x, y = buf.sample(256), restored.sample(256)
    assert torch.equal(x.obs, y.obs) and torch.equal(x.next_obs, y.next_obs) and torch.equal(x.rewards, y.rewards)
    assert torch.equal(buf.last_relabelled, restored.last_relabelled)


def test_goal_parts_must_tile_the_observation():
    with pytest.raises(ValueError, match="goal_parts"):
        HerReplayBuffer(10, 1, PARTS, 9, (1,), fake_reward, check_memory=False)


# -- the real thing: FetchReach ------------------------------------------------------------------


@pytest.fixture(scope="module")
def fetch():
    pytest.importorskip("gymnasium_robotics")
    env = GymVecEnv("FetchReach-v4", 2, seed=0)
    yield env
    env.close()


def test_fetch_is_flattened_in_goal_order(fetch):
    assert fetch.goal_parts == {"observation": slice(0, 10), "achieved_goal": slice(10, 13),
                                "desired_goal": slice(13, 16)}
    assert fetch.obs_shape == (16,)
    obs = fetch.reset()
    raw, _ = gym.make("FetchReach-v4").reset(seed=0)
    expected = np.concatenate([raw["observation"], raw["achieved_goal"], raw["desired_goal"]])
    assert torch.allclose(obs[0], torch.as_tensor(expected, dtype=torch.float32))


def test_her_rewards_on_fetch_match_the_env(fetch):
    buf = HerReplayBuffer(1000, 2, fetch.goal_parts, 16, (4,), fetch.compute_reward, check_memory=False)
    obs = fetch.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(120):
        actions = torch.rand(2, 4, generator=gen) * 2 - 1
        step = fetch.step(actions)
        buf.add(obs, actions, step.reward, step.final_obs, step.terminated, step.done)
        if step.done.any():  # the final observation keeps the episode's goal; the reset one has a new goal
            ended = step.done
            assert torch.equal(step.final_obs[ended, 13:], obs[ended, 13:])
            assert not torch.equal(step.obs[ended, 13:], obs[ended, 13:])
        obs = step.obs
    batch = buf.sample(512)
    assert buf.last_relabelled.sum() > 300
    ach, des = batch.next_obs[:, 10:13], batch.next_obs[:, 13:16]
    expected = fetch.envs.envs[0].unwrapped.compute_reward(ach.numpy(), des.numpy(), None)
    assert torch.equal(batch.rewards, torch.as_tensor(expected, dtype=torch.float32))
    assert (batch.rewards == 0).any()
    assert torch.equal(batch.obs[:, 13:], des)


def test_fetch_reports_success_of_the_final_step(fetch):
    pytest.importorskip("gymnasium_robotics")
    env = GymVecEnv("FetchReach-v4", 2, seed=1, env_kwargs={"max_episode_steps": 20})
    obs = env.reset()
    reached = False
    for t in range(20):
        # Env 0 steers to its goal; env 1 holds still, far from its own.
        actions = torch.zeros(2, 4)
        actions[0, :3] = ((obs[0, 13:16] - obs[0, 10:13]) * 20).clamp(-1, 1)
        step = env.step(actions)
        assert step.success is not None and step.success.dtype == torch.bool
        expected = env.compute_reward(step.final_obs[:, 10:13], step.final_obs[:, 13:16]) == 0
        assert torch.equal(step.success, expected)
        reached |= bool(step.success[0])
        obs = step.obs
    assert step.done.all() and step.success.tolist() == [True, False] and reached
    env.close()


def test_success_comes_from_final_info_for_ended_envs():
    done = np.array([True, False])
    info = {"is_success": np.array([0.0, 1.0]), "_is_success": np.array([False, True]),
            "final_info": {"is_success": np.array([1.0, 0.0]), "_is_success": np.array([True, False])}}
    assert GymVecEnv._success(info, done).tolist() == [True, True]
    assert GymVecEnv._success({}, done) is None


def test_cartpole_has_no_goals_or_success():
    env = GymVecEnv("CartPole-v1", 2, seed=0)
    env.reset()
    assert env.goal_parts is None and env.step(torch.tensor([0, 1])).success is None
    with pytest.raises(UserError, match="not goal-conditioned"):
        env.compute_reward(torch.zeros(1, 3), torch.zeros(1, 3))
    env.close()


def test_unknown_ids_and_missing_robotics(monkeypatch):
    with pytest.raises(UserError, match="unknown environment 'NoSuchEnv-v0'"):
        GymVecEnv("NoSuchEnv-v0", 1, seed=0)
    monkeypatch.setitem(__import__("sys").modules, "gymnasium_robotics", None)  # import now fails
    with pytest.raises(UserError, match=r"FetchNoSuch-v1 needs gymnasium-robotics; .*rung\[robotics\]"):
        check_env_id("FetchNoSuch-v1")


def test_fetch_checkpoint_restores_statistics_not_the_simulator(fetch):
    # Fetch pickles as its constructor arguments; an unpickled copy would fail on its first step.
    fetch.reset()
    state = fetch.state_dict()
    assert state["envs"] is None
    fetch.load_state_dict(state)
    assert fetch.step(torch.zeros(2, 4)).obs.shape == (2, 16)


def test_cut_episodes_keeps_a_reset_episode_apart_from_the_next():
    buf = synthetic((4,), 6)  # steps 0-3 one episode; 4 and 5 of one cut off by a resume
    blob = io.BytesIO()
    torch.save(buf.state_dict(), blob)
    blob.seek(0)
    restored = HerReplayBuffer(1000, 1, PARTS, 8, (1,), fake_reward, check_memory=False)
    restored.load_state_dict(torch.load(blob))
    restored.cut_episodes()
    synthetic((4,), 6, buf=restored, start=6)  # the envs' new episodes: 6-7 (ends where 4's would), 8-11
    batch = restored.sample(4000)
    _, t, _, gt = where_from(batch)
    r = restored.last_relabelled
    assert not r[(t == 4) | (t == 5)].any()  # never given goals of the episode after them
    assert (t == 4).any() and (t == 5).any()  # still sampled, with their own goal
    new = r & (t >= 6) & (t <= 7)
    assert new.any() and ((gt[new] >= 6) & (gt[new] <= 7)).all()


@pytest.mark.parametrize("env_id, continues", [("FetchReach-v4", False), ("CartPole-v1", True)])
def test_resume_ends_running_episodes_only_where_the_simulators_were_not_restored(tmp_path, env_id, continues):
    if env_id.startswith("Fetch"):
        pytest.importorskip("gymnasium_robotics")
    from rung.algos import sac
    from rung.run import Run

    cfg = sac.Config(env="Pendulum-v1", run_dir=str(tmp_path / "r"), eval_every=0)
    envs = GymVecEnv(env_id, 1, seed=0)
    envs.reset()
    Run("sac", cfg).save(1, 6, {"buffer": synthetic((4,), 6)}, envs)  # mid-episode: it began at step 4
    restored = HerReplayBuffer(1000, 1, PARTS, 8, (1,), fake_reward, check_memory=False)
    Run("sac", cfg, resume=True).restore({"buffer": restored}, GymVecEnv(env_id, 1, seed=0))
    assert restored.cur_start.tolist() == ([4] if continues else [6])
