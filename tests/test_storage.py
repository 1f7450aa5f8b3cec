import torch

from rung.envs import make_env
from rung.nn import ActorCritic
from rung.rollout import RolloutStorage, collect_rollout, evaluate


def test_next_values_bootstrap_from_final_obs_on_truncation():
    s = RolloutStorage(3, 2, (1,), True, 2)
    s.values[:] = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    s.truncated[1, 0] = True
    s.final_values[1, 0] = 7.0
    s.terminated[0, 1] = True
    nv = s.next_values(torch.tensor([4.0, 40.0]))
    # env 0: V(obs_1), V(final obs) at the cut, bootstrap; env 1: final value 0 where terminated
    assert nv.tolist() == [[2.0, 0.0], [7.0, 30.0], [4.0, 40.0]]


def test_flatten_shapes():
    s = RolloutStorage(4, 3, (5,), False, 2)
    b = s.flatten(torch.zeros(4, 3), torch.ones(4, 3))
    assert b.obs.shape == (12, 5) and b.actions.shape == (12, 2) and b.returns.shape == (12,)
    assert len(b.index(torch.tensor([0, 5]))) == 2


def test_collect_rollout_stores_value_of_final_observation():
    torch.manual_seed(0)
    env = make_env("CartPole-v1", 2, seed=0, env_kwargs={"max_episode_steps": 4})
    agent = ActorCritic(4, 2, True)
    storage = RolloutStorage(6, 2, (4,), True, 2)
    obs = env.reset()
    final_obs_seen = []
    real_step = env.step

    def spy(action):
        out = real_step(action)
        final_obs_seen.append(out.final_obs.clone())
        return out

    env.step = spy
    obs, returns, lengths = collect_rollout(env, agent, storage, obs)
    assert storage.truncated[3].all() and lengths == [4, 4]
    with torch.no_grad():
        expected = agent.value(final_obs_seen[3])
    torch.testing.assert_close(storage.final_values[3], expected)
    assert (storage.final_values[[0, 1, 2, 4, 5]] == 0).all()
    # The observation after the cut is the reset one, stored as step 4's input.
    assert torch.equal(storage.obs[4], torch.as_tensor(storage.obs[4]))


def test_evaluate_runs_one_episode_per_env_without_touching_global_rng():
    env = make_env("CartPole-v1", 3, seed=0)
    agent = ActorCritic(4, 2, True)
    state = torch.get_rng_state()
    returns = evaluate(agent, env, seed=5)
    assert len(returns) == 3 and all(r > 0 for r in returns)
    assert torch.equal(torch.get_rng_state(), state)
    assert evaluate(agent, env, seed=5) == returns
