"""Trajectory files: round trips through every layout, each validation error, splits by episode,
recording with `collect` and `rung collect`."""

import json

import numpy as np
import pytest
import torch

from rung.buffers import demos
from rung.buffers.demos import Trajectories
from rung.cli import main
from rung.envs.experts import get_expert
from rung.errors import UserError

FIELDS = ("observations", "actions", "rewards", "terminated", "truncated", "next_observations", "episode_ends")


def toy(lengths=(4, 2, 3), discrete=True, obs_dim=3, draw=0, **kw) -> Trajectories:
    """Episodes of the given lengths with random contents; each ends truncated except the last,
    which terminates, and next_observations follow on from observations within each episode."""
    rng = np.random.default_rng(draw)
    t = sum(lengths)
    ends = np.cumsum(lengths)
    obs = np.empty((t, obs_dim), np.float32)
    nxt = np.empty((t, obs_dim), np.float32)
    for start, end in zip(ends - lengths, ends):
        states = rng.normal(size=(end - start + 1, obs_dim)).astype(np.float32)
        obs[start:end], nxt[start:end] = states[:-1], states[1:]
    terminated, truncated = np.zeros(t, bool), np.zeros(t, bool)
    truncated[ends[:-1] - 1] = True
    terminated[ends[-1] - 1] = True
    actions = rng.integers(0, 2, t) if discrete else rng.uniform(-1, 1, (t, 2)).astype(np.float32)
    return Trajectories(obs, actions, rng.normal(size=t).astype(np.float32), terminated, truncated, nxt,
                        ends.astype(np.int64), **{"env_id": "", "source": "test", **kw})


def assert_same(a: Trajectories, b: Trajectories) -> None:
    for key in FIELDS:
        x, y = getattr(a, key), getattr(b, key)
        assert x.dtype == y.dtype and np.array_equal(x, y), key


def write_raw_npz(path, traj: Trajectories, **override):
    """An .npz as `save` writes it, with some arrays replaced (None: left out)."""
    arrays = {k: getattr(traj, k) for k in FIELDS}
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    if "metadata" not in override:
        arrays["metadata"] = np.array(json.dumps({"format": demos.FORMAT, "version": 1, "env_id": traj.env_id}))
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def cartpole():
    return demos.collect("CartPole-v1", get_expert("CartPole-v1"), 3, seed=0, num_envs=2, source="expert")


# -- the dataset itself -----------------------------------------------------------------------------

def test_returns_lengths_and_episodes():
    traj = toy()
    assert traj.num_episodes == 3 and len(traj) == 9
    assert traj.lengths().tolist() == [4, 2, 3]
    assert traj.episode_starts.tolist() == [0, 4, 6]
    expected = [traj.rewards[0:4].sum(), traj.rewards[4:6].sum(), traj.rewards[6:9].sum()]
    assert np.allclose(traj.returns(), expected)
    episodes = list(traj.episodes())
    assert [len(e) for e in episodes] == [4, 2, 3]
    assert np.allclose([e.returns()[0] for e in episodes], expected)
    assert_same(demos.concatenate(episodes), traj)


def test_split_is_by_whole_episodes_and_seeded():
    traj = toy(lengths=tuple(range(1, 11)))
    train, valid = traj.split(0.7, seed=3)
    assert (train.num_episodes, valid.num_episodes) == (7, 3)
    lengths = sorted(train.lengths().tolist() + valid.lengths().tolist())
    assert lengths == list(range(1, 11))  # every episode once, none cut
    for part in (train, valid):
        demos.check(part)
    again, _ = traj.split(0.7, seed=3)
    assert_same(train, again)
    other, _ = traj.split(0.7, seed=4)
    assert sorted(other.lengths().tolist()) != sorted(train.lengths().tolist())
    with pytest.raises(UserError, match="strictly between 0 and 1"):
        traj.split(1.0)
    with pytest.raises(UserError, match="cannot split 1 episode"):
        toy(lengths=(5,)).split(0.5)


# -- round trips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("discrete", [True, False])
def test_npz_round_trip(tmp_path, discrete):
    traj = toy(discrete=discrete, env_id="X-v0", seed=7, success=np.arange(9) % 2 == 0,
               goal_parts={"observation": (0, 1), "achieved_goal": (1, 2), "desired_goal": (2, 3)})
    path = demos.save(traj, tmp_path / "sub" / "d.npz")
    assert path.exists() and not list(path.parent.glob(".*tmp"))
    back = demos.load(path)
    assert_same(traj, back)
    assert np.array_equal(back.success, traj.success)
    assert (back.env_id, back.source, back.seed, back.goal_parts) == ("X-v0", "test", 7, traj.goal_parts)


@pytest.mark.parametrize("discrete", [True, False])
def test_d4rl_round_trip(tmp_path, discrete):
    h5py = pytest.importorskip("h5py")
    traj = toy(discrete=discrete, env_id="X-v0", success=np.ones(9, bool))
    path = demos.save(traj, tmp_path / "d.hdf5")
    with h5py.File(path) as f:
        assert {"observations", "actions", "rewards", "terminals", "timeouts", "next_observations"} <= set(f)
    back = demos.load(path)
    assert_same(traj, back)
    assert back.env_id == "X-v0" and back.success.all()


def test_d4rl_without_next_observations(tmp_path):
    """A time-limited episode loses its last step (its final observation is not in the file) and
    the step before becomes its truncated end; a terminal step keeps all its steps."""
    h5py = pytest.importorskip("h5py")
    traj = toy(lengths=(4, 1, 3))
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f["observations"], f["actions"], f["rewards"] = traj.observations, traj.actions, traj.rewards
        f["terminals"], f["timeouts"] = traj.terminated, traj.truncated
    back = demos.load(tmp_path / "d.hdf5")
    assert back.lengths().tolist() == [3, 3]  # the one-step truncated episode is gone entirely
    assert back.truncated.tolist() == [False, False, True, False, False, False]
    assert back.terminated.tolist() == [False] * 5 + [True]
    assert np.array_equal(back.observations, traj.observations[[0, 1, 2, 5, 6, 7]])
    assert np.array_equal(back.next_observations[:5], traj.next_observations[[0, 1, 2, 5, 6]])


@pytest.mark.parametrize("goal", [False, True])
def test_minari_layout_round_trip(tmp_path, goal):
    h5py = pytest.importorskip("h5py")
    parts = {"observation": (0, 2), "achieved_goal": (2, 4), "desired_goal": (4, 6)} if goal else None
    traj = toy(discrete=not goal, obs_dim=6, goal_parts=parts)
    out = demos.export_minari(traj, tmp_path / "toy-v0")
    with h5py.File(out / "data" / "main_data.hdf5") as f:
        assert sorted(f) == ["episode_0", "episode_1", "episode_2"]
        ep = f["episode_0"]
        assert {"observations", "actions", "rewards", "terminations", "truncations"} <= set(ep)
        obs = ep["observations/observation"] if goal else ep["observations"]
        assert obs.shape[0] == 5 and ep["rewards"].shape == (4,)  # T+1 observations
        assert f.attrs["dataset_id"] == "toy-v0" and f.attrs["total_steps"] == 9
    assert json.loads((out / "data" / "metadata.json").read_text())["total_episodes"] == 3
    back = demos.load(out)
    assert_same(traj, back)
    assert back.goal_parts == parts


def test_minari_reads_the_export(tmp_path, cartpole, monkeypatch):
    pytest.importorskip("h5py")
    minari = pytest.importorskip("minari")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    demos.export_minari(cartpole, tmp_path / "rung" / "cartpole-expert-v0", "rung/cartpole-expert-v0")
    dataset = minari.load_dataset("rung/cartpole-expert-v0")
    assert dataset.total_episodes == 3 and dataset.total_steps == len(cartpole)
    assert dataset.action_space.n == 2 and dataset.observation_space.shape == (4,)
    episodes = list(dataset.iterate_episodes())
    assert [e.rewards.sum() for e in episodes] == cartpole.returns().tolist()
    first = next(cartpole.episodes())
    assert np.array_equal(episodes[0].observations[:-1], first.observations)
    assert np.array_equal(episodes[0].observations[-1], first.next_observations[-1])
    assert dataset.recover_environment().spec.id == "CartPole-v1"


# -- validation -----------------------------------------------------------------------------------

def test_each_problem_is_one_line_naming_the_file(tmp_path, cartpole):
    good = toy()
    cases = {
        "rewards have shape (8,)": dict(rewards=good.rewards[:-1]),
        "observations hold NaN or inf (first at step 2)": dict(observations=np.where(np.arange(9)[:, None] == 2, np.nan, good.observations)),
        "actions hold NaN or inf": dict(actions=np.full((9, 2), np.inf, np.float32)),
        "next_observations have shape": dict(next_observations=good.next_observations[:, :2]),
        "step 1 ends an episode that episode_ends continues": dict(truncated=np.isin(np.arange(9), [1, 3, 5])),
        "missing array 'episode_ends'": dict(episode_ends=None),
    }
    for i, (message, override) in enumerate(cases.items()):
        path = write_raw_npz(tmp_path / f"bad{i}.npz", good, **override)
        with pytest.raises(UserError) as e:
            demos.load(path)
        assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), message
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        demos.load(tmp_path / "junk.npz")
    whole = demos.save(good, tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(whole[: len(whole) // 2])  # a copy that stopped half-way
    with pytest.raises(UserError, match="not a readable .npz"):
        demos.load(tmp_path / "cut.npz")
    with pytest.raises(UserError, match="metadata is not JSON"):
        demos.load(write_raw_npz(tmp_path / "meta.npz", good, metadata=np.array("{not json")))


def test_checked_against_the_env(tmp_path, cartpole):
    path = demos.save(cartpole, tmp_path / "cp.npz")
    demos.load(path, env="CartPole-v1")
    with pytest.raises(UserError, match="observations have 4 dims but Pendulum-v1 gives"):
        demos.load(path, env="Pendulum-v1")
    with pytest.raises(UserError, match=r"action 2 at step 0 is outside CartPole-v1's Discrete\(2\)"):
        demos.load(write_raw_npz(tmp_path / "a.npz", cartpole, actions=np.full(len(cartpole), 2)), env="CartPole-v1")
    column = write_raw_npz(tmp_path / "col.npz", cartpole, actions=cartpole.actions[:, None])
    with pytest.raises(UserError, match=r"a \(T, 1\) column of whole numbers; .* save actions\[:, 0\] as integers"):
        demos.load(column, env="CartPole-v1")
    with pytest.raises(UserError, match="actions are discrete but MountainCarContinuous-v0's are continuous"):
        demos.load(write_raw_npz(tmp_path / "b.npz", cartpole, observations=cartpole.observations[:, :2],
                                 next_observations=cartpole.next_observations[:, :2]), env="MountainCarContinuous-v0")
    pendulum = toy(discrete=False, obs_dim=3)
    pendulum.actions = pendulum.actions[:, :1] * 3.0
    with pytest.raises(UserError, match="outside Pendulum-v1's bounds") as e:
        demos.load(demos.save(pendulum, tmp_path / "p.npz"), env="Pendulum-v1")
    assert "p.npz" in str(e.value) and "clip" in str(e.value)


def test_unknown_extension_and_missing_h5py(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="name it .npz"):
        demos.save(toy(), tmp_path / "d.csv")
    monkeypatch.setitem(__import__("sys").modules, "h5py", None)  # import now fails
    with pytest.raises(UserError, match=r"pip install 'rung\[offline\]'"):
        demos.save(toy(), tmp_path / "d.hdf5")


# -- recording ------------------------------------------------------------------------------------

def test_collect_cartpole_expert_gives_whole_episodes(cartpole):
    assert cartpole.num_episodes == 3 and cartpole.env_id == "CartPole-v1" and cartpole.seed == 0
    assert cartpole.returns().tolist() == [500.0] * 3 == cartpole.lengths().tolist()
    assert cartpole.truncated[cartpole.episode_ends - 1].all() and not cartpole.terminated.any()
    for ep in cartpole.episodes():
        assert np.abs(ep.observations[0]).max() <= 0.05  # starts from a reset state
        assert np.array_equal(ep.next_observations[:-1], ep.observations[1:])
    assert cartpole.actions.dtype == np.int64


def test_collect_returns_match_evaluate():
    """One episode per env copy from the same seeds: collect's returns are evaluate's, here on
    Pendulum, whose returns are not a step count."""
    from rung.envs.make import make_env
    from rung.rollout.evaluate import evaluate

    expert = get_expert("Pendulum-v1")

    class Agent:
        def action(self, obs, deterministic=True):
            return expert(obs)

    traj = demos.collect("Pendulum-v1", expert, 3, seed=11, num_envs=3)
    env = make_env("Pendulum-v1", 3, 0)
    expected = evaluate(Agent(), env, seed=11)
    env.close()
    assert np.allclose(traj.returns(), expected, atol=1e-3)
    assert traj.actions.shape == (600, 1) and traj.actions.dtype == np.float32
    assert np.abs(traj.actions).max() <= 2.0


def test_collect_rejects_bad_actions():
    with pytest.raises(UserError, match=r"returned actions of shape \(1, 2\) for 1 observations; CartPole-v1 takes \(1,\)"):
        demos.collect("CartPole-v1", lambda obs: torch.zeros(1, 2, dtype=torch.long), 1)


def _fake_run(run_dir, algo: str, normalize_obs: bool):
    """A run folder with an untrained agent's checkpoint: what load_policy reads, without training."""
    from rung import algos, checkpoint
    from rung.config import to_dict
    from rung.envs.make import make_env

    module = algos.get(algo)
    cfg = module.Config(env="CartPole-v1", normalize_obs=normalize_obs, run_dir=str(run_dir))
    env = make_env("CartPole-v1", 1, 0, normalize_obs=normalize_obs)
    torch.manual_seed(0)
    agent = module.make_agent(cfg, env)
    normalizer = env.normalizer.state_dict()
    normalizer["obs_rms"]["mean"] = np.array([0.1, 0.2, 0.3, 0.4])
    normalizer["obs_rms"]["var"] = np.array([4.0, 4.0, 4.0, 4.0])
    env.close()
    (run_dir / "checkpoints").mkdir(parents=True)
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "algo": algo, "config": to_dict(cfg), "step": 0,
                            "agent": agent.state_dict(), "normalizer": normalizer}, run_dir / "checkpoints" / "best.pt")
    return agent


@pytest.mark.parametrize("algo, env_normalizes", [("ppo", True), ("dqn", False)])
def test_policy_from_run_applies_the_env_normaliser_only_where_training_did(tmp_path, algo, env_normalizes):
    agent = _fake_run(tmp_path / "run", algo, normalize_obs=True)
    env_id, policy = demos.policy_from_run(tmp_path / "run")
    assert env_id == "CartPole-v1"
    obs = torch.randn(64, 4)
    mean = torch.tensor([0.1, 0.2, 0.3, 0.4])
    seen = ((obs - mean) / (4.0 + 1e-8) ** 0.5).clamp(-10, 10) if env_normalizes else obs
    with torch.no_grad():
        assert torch.equal(policy(obs), agent.action(seen, deterministic=True))


# -- the command ----------------------------------------------------------------------------------

def test_cli_collect_end_to_end(tmp_path, capsys):
    out = tmp_path / "demos.npz"
    code = main(["collect", "--env", "CartPole-v1", "--policy", "expert", "--episodes", "3", "-o", str(out), "--num-envs", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "return 500.00 ± 0.00 over 3 episodes" in printed and str(out) in printed
    traj = demos.load(out, env="CartPole-v1")
    assert traj.num_episodes == 3 and traj.source == "expert"


def test_cli_collect_from_a_run_folder(tmp_path, capsys):
    _fake_run(tmp_path / "run", "ppo", normalize_obs=False)
    out = tmp_path / "run.npz"
    assert main(["collect", "--policy", str(tmp_path / "run"), "--episodes", "2", "-o", str(out)]) == 0
    assert "over 2 episodes" in capsys.readouterr().out
    assert demos.load(out).num_episodes == 2


def test_random_policy_is_uniform_within_the_bounds_and_reproducible():
    a = demos.random_policy("Pendulum-v1", seed=3)(torch.zeros(4000, 3))
    assert a.shape == (4000, 1) and a.min() >= -2.0 and a.max() <= 2.0
    assert abs(float(a.mean())) < 0.1 and float(a.std()) > 1.0  # uniform on [-2, 2]: std 1.15
    assert torch.equal(a, demos.random_policy("Pendulum-v1", seed=3)(torch.zeros(4000, 3)))
    d = demos.random_policy("CartPole-v1", seed=0)(torch.zeros(1000, 4))
    assert d.dtype == torch.int64 and set(d.tolist()) == {0, 1}


def test_cli_collect_random_policy(tmp_path, capsys):
    out = tmp_path / "random.npz"
    assert main(["collect", "--env", "CartPole-v1", "--policy", "random", "--episodes", "5", "-o", str(out)]) == 0
    traj = demos.load(out, env="CartPole-v1")
    # A random CartPole policy falls within a few dozen steps; the expert never does.
    assert traj.num_episodes == 5 and traj.source == "random" and traj.mean_return < 100


@pytest.mark.parametrize("argv, message", [
    (["--env", "Acrobot-v1"], "no scripted expert for 'Acrobot-v1'; experts exist for CartPole-v1"),
    (["--env", "NoSuchEnv-v0"], "no scripted expert for 'NoSuchEnv-v0'"),
    (["--policy", "expert"], "--policy expert needs --env"),
    (["--policy", "random"], "--policy random needs --env"),
    (["--env", "CartPole-v1", "--episodes", "0"], "--episodes must be > 0"),
    (["--env", "CartPole-v1", "--policy", "/nonexistent/run"], "is not a directory"),
])
def test_cli_collect_errors_exit_2(tmp_path, capsys, argv, message):
    code = main(["collect", *argv, "-o", str(tmp_path / "d.npz")])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.count("\n") == 1 and err.startswith("rung: error: ")
    assert not (tmp_path / "d.npz").exists()


def test_cli_collect_bad_extension_exits_2(tmp_path, capsys):
    assert main(["collect", "--env", "CartPole-v1", "-o", str(tmp_path / "d.csv")]) == 2
    assert "name it .npz" in capsys.readouterr().err


def test_paired_returns_replay_the_same_start_states():
    expert = get_expert("Pendulum-v1")
    a = demos.paired_returns("Pendulum-v1", expert, 4, seed=5)
    assert a.shape == (4,) and np.array_equal(a, demos.paired_returns("Pendulum-v1", expert, 4, seed=5))
    # Start i of seed 5 is start i-1 of seed 6: the same states, shifted by one.
    b = demos.paired_returns("Pendulum-v1", expert, 4, seed=6)
    assert np.allclose(a[1:], b[:3]) and not np.allclose(a, b)
