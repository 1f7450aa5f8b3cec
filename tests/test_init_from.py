"""--init-from (offline -> online): the regulariser's pure functions against hand-computed
numbers; PPO starts from a bc clone (actor and frozen observation statistics, fresh critic) and
from a ppo run (critic too); SAC starts from a sac run and from a bc clone made for it (actor and
observation statistics, fresh critics); the regulariser is 0 for the identical
policy, grows once the policy moves, and its weight follows the schedule in metrics.jsonl;
mismatched sources are refused in one line; a resumed run ends where an uninterrupted one does
without reading the source again."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest
import torch

from rung import algos, checkpoint
from rung.buffers import demos
from rung.envs.experts import get_expert
from rung.envs.make import make_env
from rung.errors import UserError
from rung.objectives import decayed_coef, kl_categorical, kl_diag_gaussian

# -- the pure functions ---------------------------------------------------------------------------


def test_kl_categorical_by_hand():
    # KL([.5, .5] || [.25, .75]) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3) = 0.1438410
    logp_ref = torch.tensor([[0.5, 0.5], [0.1, 0.9]]).log()
    logp = torch.tensor([[0.25, 0.75], [0.1, 0.9]]).log()
    kl, stats = kl_categorical(logp_ref, logp)
    assert kl.shape == (2,)
    assert kl[0].item() == pytest.approx(0.1438410, abs=1e-6)
    assert kl[1].item() == 0.0  # the same distribution
    assert stats["kl"].item() == pytest.approx(0.1438410 / 2, abs=1e-6)
    # KL is not symmetric: KL([.25, .75] || [.5, .5]) = .25 ln .5 + .75 ln 1.5 = -0.1732868 + 0.3040988 = 0.1308120
    assert kl_categorical(logp, logp_ref)[0][0].item() == pytest.approx(0.1308120, abs=1e-6)


def test_kl_diag_gaussian_by_hand():
    # Dim 0: N(0, 1) || N(1, 2^2): ln 2 + (1 + 1) / (2 * 4) - 1/2 = 0.4431472; dim 1 identical: 0.
    mean_ref, log_std_ref = torch.tensor([[0.0, 3.0]]), torch.tensor([0.0, -1.0])
    mean, log_std = torch.tensor([[1.0, 3.0]]), torch.tensor([math.log(2.0), -1.0])
    kl, _ = kl_diag_gaussian(mean_ref, log_std_ref, mean, log_std)
    assert kl.shape == (1,) and kl.item() == pytest.approx(0.4431472, abs=1e-6)
    assert kl_diag_gaussian(mean, log_std, mean, log_std)[0].item() == 0.0
    # Reverse: N(1, 4) || N(0, 1): -ln 2 + (4 + 1) / 2 - 1/2 = 1.3068528
    assert kl_diag_gaussian(mean, log_std, mean_ref, log_std_ref)[0].item() == pytest.approx(1.3068528, abs=1e-6)


def test_kl_diag_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, s1, s2 = (torch.randn(5, 3, generator=g) for _ in range(4))
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, s1.exp()),
                                            torch.distributions.Normal(m2, s2.exp())).sum(-1)
    assert torch.allclose(kl_diag_gaussian(m1, s1, m2, s2)[0], ref, atol=1e-5)


def test_decayed_coef_schedules():
    # linear: 2 (1 - t); exponential: 2 (0.01^t - 0.01) / 0.99, at t = 1/2: 2 * 0.09 / 0.99 = 2/11.
    assert [decayed_coef(2.0, s, 100, "linear") for s in (0, 25, 50, 100, 150)] == [2.0, 1.5, 1.0, 0.0, 0.0]
    exp = [decayed_coef(2.0, s, 100, "exponential") for s in (0, 50, 100, 150)]
    assert exp == pytest.approx([2.0, 2 / 11, 0.0, 0.0], abs=1e-12)
    assert exp[2] == 0.0 and exp[3] == 0.0  # exactly 0 from the end on, not merely small
    assert decayed_coef(2.0, 10**9, 0, "linear") == 2.0  # decay_steps 0: constant
    with pytest.raises(ValueError):
        decayed_coef(1.0, 0, 10, "cosine")


# -- source runs ----------------------------------------------------------------------------------

BC = dict(epochs=3, batch_size=128, hidden_sizes=(32, 32), validation_fraction=0.25, eval_every=20, eval_episodes=1)
PPO = dict(env="CartPole-v1", num_envs=4, num_steps=32, hidden_sizes=(32, 32), eval_every=0, eval_episodes=2,
           checkpoint_every=1)
SAC = dict(env="Pendulum-v1", total_timesteps=300, learning_starts=200, batch_size=32, buffer_size=1000,
           hidden_sizes=(32, 32), eval_episodes=2,
           normalize_obs=True, eval_every=0, log_every=50, checkpoint_every=100)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Finished runs to start from: bc on 4 CartPole expert episodes, ppo (normalising
    observations and rewards) on CartPole, sac on Pendulum, and bc on 4 Pendulum expert episodes
    cloned for sac and for ppo."""
    root = tmp_path_factory.mktemp("sources")
    traj = demos.collect("CartPole-v1", get_expert("CartPole-v1"), 4, seed=0, num_envs=2, source="expert")
    data = demos.save(traj, root / "cartpole.npz")
    bc = algos.get("bc")
    bc.train(bc.Config(env="CartPole-v1", dataset=str(data), run_dir=str(root / "bc"), **BC))
    ppo = algos.get("ppo")
    ppo.train(ppo.Config(**{**PPO, "total_timesteps": 256, "normalize_obs": True, "normalize_reward": True},
                         run_dir=str(root / "ppo")))
    sac = algos.get("sac")
    sac.train(sac.Config(**SAC, run_dir=str(root / "sac")))
    traj = demos.collect("Pendulum-v1", get_expert("Pendulum-v1"), 4, seed=0, num_envs=2, source="expert")
    data = demos.save(traj, root / "pendulum.npz")
    for for_algo in ("sac", "ppo"):
        bc.train(bc.Config(env="Pendulum-v1", dataset=str(data), for_algo=for_algo, run_dir=str(root / f"bc_{for_algo}"),
                           **BC))
    return {"bc": root / "bc", "ppo": root / "ppo", "sac": root / "sac", "bc_sac": root / "bc_sac",
            "bc_ppo": root / "bc_ppo"}


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot_at_start(monkeypatch):
    """What train() built before its first iteration: the agent's state and the env's observation
    statistics, captured where Run.restore hands over to the loop."""
    from rung.run import Run

    seen = {}
    original = Run.restore

    def restore(self, modules, envs):
        out = original(self, modules, envs)
        seen["agent"] = {k: v.clone() for k, v in modules["agent"].state_dict().items() if isinstance(v, torch.Tensor)}
        seen["module"] = modules["agent"]
        seen["obs_rms"] = envs.normalizer.obs_rms.state_dict()
        seen["ret_rms"] = envs.normalizer.ret_rms.state_dict()
        seen["normalizer"] = envs.normalizer
        return out

    monkeypatch.setattr(Run, "restore", restore)
    return seen


def as_array(x):
    return np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, np.float64)


# -- PPO ------------------------------------------------------------------------------------------


def test_ppo_from_bc_starts_as_the_clone_and_the_regulariser_follows_its_schedule(tmp_path, monkeypatch, sources):
    seen = snapshot_at_start(monkeypatch)
    ppo = algos.get("ppo")
    # One minibatch and one epoch: the first logged KL is computed before any update.
    cfg = ppo.Config(**PPO, total_timesteps=512, seed=2, normalize_obs=True, update_epochs=1,
                     init_from=str(sources["bc"]), init_reg_coef=0.5, init_reg_decay_steps=512,
                     run_dir=str(tmp_path / "run"))
    result = ppo.train(cfg)

    src = checkpoint.load(sources["bc"] / "checkpoints" / "best.pt")
    ours = seen["agent"]
    for k, v in src["agent"].items():
        if k.startswith("critic"):
            if k.endswith("weight"):  # (biases start at 0 in both)
                assert not torch.equal(v, ours[k]), f"{k}: bc's untrained critic was copied"
        else:
            assert torch.equal(v, ours[k]), f"{k} differs from the clone"
    for key in ("mean", "var"):
        assert np.array_equal(as_array(seen["obs_rms"][key]), as_array(src["normalizer"]["obs_rms"][key]))

    # The same raw observations give the same action distribution in both runs.
    from rung.evaluation import load_policy

    _, bc_agent, bc_norm, _ = load_policy(sources["bc"])
    raw = np.random.default_rng(0).normal(size=(6, 4)) * [1.0, 0.5, 0.1, 0.5]
    from rung.envs.make import make_env

    env = make_env("CartPole-v1", 1, 0, normalize_obs=True)
    env.normalizer.load_state_dict(bc_norm)
    x_bc = torch.as_tensor(env.normalizer.obs(raw, update=False), dtype=torch.float32)
    x_ppo = torch.as_tensor(seen["normalizer"].obs(raw, update=False), dtype=torch.float32)
    env.close()
    fresh = ppo.make_agent(cfg, make_env("CartPole-v1", 1, 0))
    fresh.load_state_dict(ours)
    with torch.no_grad():
        assert torch.equal(bc_agent.dist_params(x_bc), fresh.dist_params(x_ppo))

    # Observation statistics stayed frozen through training.
    final = checkpoint.load(result.run_dir / "checkpoints" / "latest.pt")
    assert np.array_equal(as_array(final["ranks"][0]["env"]["normalizer"]["obs_rms"]["mean"]),
                          as_array(src["normalizer"]["obs_rms"]["mean"]))

    metrics = [r for r in rows(result.run_dir) if "charts/init_reg_coef" in r]
    assert [r["step"] for r in metrics] == [128, 256, 384, 512]
    for r in metrics:
        assert r["charts/init_reg_coef"] == pytest.approx(decayed_coef(0.5, r["step"], 512, "linear"))
    reg = [r.get("losses/init_reg") for r in metrics]
    assert reg[0] == 0.0  # pi == pi_init on the first minibatch
    assert reg[1] > 0 and reg[2] > 0  # the policy moved
    assert reg[3] is None  # weight 0 at step 512: nothing computed, nothing logged


def test_ppo_from_ppo_takes_the_critic_and_reward_statistics(tmp_path, monkeypatch, sources):
    seen = snapshot_at_start(monkeypatch)
    ppo = algos.get("ppo")
    cfg = ppo.Config(**PPO, total_timesteps=128, normalize_obs=True, normalize_reward=True,
                     init_from=str(sources["ppo"]), init_from_checkpoint="latest", run_dir=str(tmp_path / "run"))
    ppo.train(cfg)
    src = checkpoint.load(sources["ppo"] / "checkpoints" / "latest.pt")
    assert all(torch.equal(v, seen["agent"][k]) for k, v in src["agent"].items())
    src_norm = src["ranks"][0]["env"]["normalizer"]
    for name in ("obs_rms", "ret_rms"):
        assert seen[name]["count"] == src_norm[name]["count"]
        assert np.array_equal(as_array(seen[name]["var"]), as_array(src_norm[name]["var"]))
    # Observation statistics stay frozen; reward statistics go on learning.
    assert seen["normalizer"].obs_rms.count == src_norm["obs_rms"]["count"]
    assert seen["normalizer"].ret_rms.count > src_norm["ret_rms"]["count"]


def test_ppo_from_a_continuous_clone_uses_the_gaussian_kl(tmp_path):
    traj = demos.collect("Pendulum-v1", get_expert("Pendulum-v1"), 2, seed=0, num_envs=2, source="expert")
    bc = algos.get("bc")
    bc.train(bc.Config(env="Pendulum-v1", dataset=str(demos.save(traj, tmp_path / "pendulum.npz")), loss="nll",
                       run_dir=str(tmp_path / "bc"),
                       **{**BC, "epochs": 2, "validation_fraction": 0.0, "eval_every": 0}))
    ppo = algos.get("ppo")
    cfg = ppo.Config(**{**PPO, "env": "Pendulum-v1"}, total_timesteps=256, update_epochs=1, normalize_obs=True,
                     init_from=str(tmp_path / "bc"), init_reg_coef=1.0, run_dir=str(tmp_path / "run"))
    result = ppo.train(cfg)
    reg = [r["losses/init_reg"] for r in rows(result.run_dir) if "losses/init_reg" in r]
    assert reg[0] == 0.0 and reg[1] > 0
    src = checkpoint.load(tmp_path / "bc" / "checkpoints" / "latest.pt")["agent"]["head.log_std"]
    init = checkpoint.load(result.run_dir / "checkpoints" / "latest.pt")["init_policy"]["head.log_std"]
    assert torch.equal(src, init) and not torch.equal(src, torch.zeros_like(src))  # the fitted std came along


# -- SAC ------------------------------------------------------------------------------------------


def test_sac_from_sac_loads_actor_and_critics_and_logs_the_regulariser(tmp_path, monkeypatch, sources):
    seen = snapshot_at_start(monkeypatch)
    sac = algos.get("sac")
    cfg = sac.Config(**{**SAC, "total_timesteps": 300, "learning_starts": 100}, init_from=str(sources["sac"]),
                     init_from_checkpoint="latest", init_reg_coef=2.0, init_reg_decay_steps=400,
                     init_reg_schedule="exponential", run_dir=str(tmp_path / "run"))
    result = sac.train(cfg)
    src = checkpoint.load(sources["sac"] / "checkpoints" / "latest.pt")["agent"]
    for k, v in src.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, seen["agent"][k]), f"{k} was not loaded"
    assert any(k.startswith("qf.") for k in src) and any(k.startswith("qf_target.") for k in src)
    metrics = [r for r in rows(result.run_dir) if "charts/init_reg_coef" in r]
    assert [r["step"] for r in metrics] == [100, 150, 200, 250, 300]
    for r in metrics:
        assert r["charts/init_reg_coef"] == pytest.approx(decayed_coef(2.0, r["step"], 400, "exponential"))
        assert r["losses/init_reg"] > 0  # logged after gradient steps have moved the actor


def test_sac_from_a_clone_for_sac_acts_as_the_clone_with_fresh_critics(tmp_path, monkeypatch, sources):
    seen = snapshot_at_start(monkeypatch)
    sac = algos.get("sac")
    # Seed 2, the clone's was 1: fresh critics then differ from the clone's (equally untrained) ones.
    cfg = sac.Config(**SAC, init_from=str(sources["bc_sac"]), init_alpha=0.1, seed=2, run_dir=str(tmp_path / "run"))
    sac.train(cfg)
    clone = checkpoint.load(sources["bc_sac"] / "checkpoints" / "latest.pt")["agent"]  # too short for a best.pt
    for k, v in clone.items():
        if k.startswith(("actor.", "obs_norm.")) and isinstance(v, torch.Tensor):
            assert torch.equal(v, seen["agent"][k]), f"{k} was not loaded"
    # bc never trained the clone's critics; the run keeps its own fresh ones and its init_alpha.
    assert not torch.equal(clone["qf.weights.0"], seen["agent"]["qf.weights.0"])
    assert seen["agent"]["log_alpha"].item() == pytest.approx(math.log(0.1))
    # The statistics are the demonstrations', so the loaded policy is the clone as `rung eval` plays it.
    _, clone_policy = demos.policy_from_run(sources["bc_sac"])
    obs = torch.tensor([[1.0, 0.0, 0.0], [-0.5, 0.8, 2.0]])
    agent = sac.make_agent(cfg, make_env("Pendulum-v1", 1, 0))
    agent.load_state_dict(seen["agent"], strict=False)  # every tensor; the running counts are not used to act
    assert torch.equal(agent.action(obs), clone_policy(obs))


# -- refusals -------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo, source, overrides, message", [
    ("ppo", "bc", dict(hidden_sizes=(64, 64)), r"has hidden_sizes 32,32 and this run 64,64; pass --hidden-sizes 32,32"),
    ("ppo", "bc", dict(env="Acrobot-v1"),
     r"was trained on CartPole-v1 and this run is on Acrobot-v1; pass --env CartPole-v1"),
    ("ppo", "bc", dict(normalize_obs=False), r"has normalize_obs true and this run false; pass --normalize-obs true"),
    ("ppo", "bc", dict(activation="relu"), r"has activation tanh and this run relu"),
    ("ppo", "bc", dict(actor_hidden_sizes=(0,)), r"has actor_hidden_sizes 32,32 and this run 0; pass --actor-hidden-sizes 32,32"),
    ("ppo", "sac", dict(), r"is a sac run; ppo starts only from bc or ppo runs"),
    ("ppo", "bc_sac", dict(env="Pendulum-v1"), r"is a bc run cloned for sac, whose actor has another shape than ppo's"),
    ("sac", "bc_ppo", dict(), r"is a bc run cloned for ppo, whose unsquashed Gaussian does not map onto sac's"),
    ("sac", "bc", dict(), r"was trained on CartPole-v1 and this run is on Pendulum-v1"),
    ("sac", "bc_sac", dict(hidden_sizes=(64, 64)), r"has hidden_sizes 32,32 and this run 64,64"),
    ("sac", "sac", dict(n_critics=3), r"has n_critics 2 and this run 3"),
])
def test_mismatched_sources_are_refused_in_one_line(tmp_path, sources, algo, source, overrides, message):
    module = algos.get(algo)
    base = {**(PPO if algo == "ppo" else SAC), "normalize_obs": True, "total_timesteps": 256}
    cfg = module.Config(**{**base, **overrides}, init_from=str(sources[source]), run_dir=str(tmp_path / "run"))
    with pytest.raises(UserError, match=message) as err:
        module.train(cfg)
    assert "\n" not in str(err.value)


def test_ppo_refuses_a_source_with_another_observation_shape(tmp_path, monkeypatch, sources):
    # A gymnasium env and its batched twin count as the same env; their spaces are still compared.
    import rung.init_from

    real = rung.init_from.make_env

    def other_shape(env_id, *args, **kwargs):
        env = real(env_id, *args, **kwargs)
        env.obs_shape = (5,)
        return env

    monkeypatch.setattr(rung.init_from, "make_env", other_shape)
    ppo = algos.get("ppo")
    cfg = ppo.Config(**{**PPO, "env": "batched/CartPole-v1"}, total_timesteps=256, normalize_obs=True,
                     init_from=str(sources["bc"]), run_dir=str(tmp_path / "run"))
    with pytest.raises(UserError, match=r"has observation shape \(5,\) and this run \(4,\); start from a run"):
        ppo.train(cfg)


def test_a_folder_that_is_no_run_is_refused(tmp_path):
    ppo = algos.get("ppo")
    cfg = ppo.Config(**PPO, total_timesteps=256, init_from=str(tmp_path / "nothing"), run_dir=str(tmp_path / "run"))
    with pytest.raises(UserError, match="--init-from .*nothing holds no checkpoints/ folder"):
        ppo.train(cfg)


def test_regulariser_without_a_source_is_refused():
    ppo = algos.get("ppo")
    with pytest.raises(UserError, match="--init-reg-coef pulls the policy .* pass --init-from RUN_DIR"):
        ppo.Config(init_reg_coef=0.1).validate()
    with pytest.raises(UserError, match="--init-reg-decay-steps must be >= 0"):
        algos.get("sac").Config(init_from="x", init_reg_decay_steps=-1).validate()


# -- resume ---------------------------------------------------------------------------------------


class Crash(Exception):
    pass


@pytest.mark.parametrize("algo", ["ppo", "sac"])
def test_crash_then_resume_with_the_regulariser_equals_uninterrupted(tmp_path, monkeypatch, sources, algo):
    """The source is deleted before resuming: the frozen pi_init and the observation statistics
    must come from the checkpoint."""
    from rung.run import Run

    source = tmp_path / "source"
    shutil.copytree(sources["bc" if algo == "ppo" else "sac"], source)
    module = algos.get(algo)
    if algo == "ppo":
        cfg = module.Config(**PPO, total_timesteps=512, num_minibatches=2, normalize_obs=True, init_from=str(source),
                            init_reg_coef=0.5, init_reg_decay_steps=1024, run_dir=str(tmp_path / "full"))
        at = 256
    else:
        cfg = module.Config(**{**SAC, "total_timesteps": 300, "learning_starts": 100}, save_buffer=True,
                            init_from=str(source), init_reg_coef=1.0, init_reg_decay_steps=1000,
                            run_dir=str(tmp_path / "full"))
        at = 200
    full = module.train(cfg)
    ref = full.agent.state_dict()
    ref_init = checkpoint.load(full.run_dir / "checkpoints" / "latest.pt")["init_policy"]

    crashed = dataclasses.replace(cfg, run_dir=str(tmp_path / "crashed"))
    original = Run.maybe_checkpoint

    def crash_after(self, iteration, step, modules, envs):
        original(self, iteration, step, modules, envs)
        if step == at:
            raise Crash

    monkeypatch.setattr(Run, "maybe_checkpoint", crash_after)
    with pytest.raises(Crash):
        module.train(crashed)
    monkeypatch.setattr(Run, "maybe_checkpoint", original)
    shutil.rmtree(source)
    resumed = module.train(crashed, resume=True)
    out = resumed.agent.state_dict()
    assert all(torch.equal(ref[k], out[k]) for k in ref if isinstance(ref[k], torch.Tensor))
    init = checkpoint.load(resumed.run_dir / "checkpoints" / "latest.pt")["init_policy"]
    assert all(torch.equal(ref_init[k], init[k]) for k in ref_init if isinstance(ref_init[k], torch.Tensor))
    reg = [r["losses/init_reg"] for r in rows(resumed.run_dir) if "losses/init_reg" in r]
    assert reg and reg == [r["losses/init_reg"] for r in rows(full.run_dir) if "losses/init_reg" in r]


def test_sac_compiled_update_follows_the_eager_one_with_the_regulariser(tmp_path, sources):
    """sac --compile adds the behaviour-cloning term as the eager loop does, and drops it (and its
    log) once the decaying weight reaches 0, which happens mid-run here."""
    sac = algos.get("sac")
    base = dict(SAC, total_timesteps=130, learning_starts=100, log_every=5, init_from=str(sources["sac"]),
                init_reg_coef=0.5, init_reg_decay_steps=115)
    eager, compiled = (sac.train(sac.Config(**base, compile=c, run_dir=str(tmp_path / str(c)))) for c in (False, True))
    a, b = eager.agent.state_dict(), compiled.agent.state_dict()
    for k, v in a.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            assert torch.allclose(v, b[k], rtol=1e-5, atol=1e-5), k
    logged = [[sorted(r) for r in rows(res.run_dir) if "charts/init_reg_coef" in r] for res in (eager, compiled)]
    assert logged[0] == logged[1]
    assert any("losses/init_reg" in keys for keys in logged[0]) and "losses/init_reg" not in logged[0][-1]
