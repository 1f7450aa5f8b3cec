"""Smoke tests: every algorithm runs a few hundred steps on discrete and continuous actions,
keeps the run-folder contract, changes every parameter, and is reproducible from its seed."""

import dataclasses
import json

import pytest
import torch
import yaml

from rung import algos, checkpoint

SUMMARY_KEYS = {"algo", "env", "seed", "total_timesteps", "wall_seconds", "eval_mean_return", "eval_std_return",
                "eval_episodes", "solved_threshold", "solved_at_step", "solved_at_seconds"}

CASES = [
    ("ppo", dict(env="CartPole-v1", num_envs=4, num_steps=32, total_timesteps=512)),
    ("ppo", dict(env="Pendulum-v1", num_envs=2, num_steps=64, num_minibatches=4, total_timesteps=512,
                 normalize_obs=True, normalize_reward=True)),
    ("reinforce", dict(env="CartPole-v1", num_envs=4, num_steps=64, total_timesteps=512)),
    ("reinforce", dict(env="Pendulum-v1", num_envs=2, num_steps=64, total_timesteps=512, normalize_obs=True)),
    ("ppo", dict(env="batched/CartPole-v1", num_envs=16, num_steps=16, num_minibatches=2, total_timesteps=512,
                 target_kl=0.001, clip_vloss=True)),
    ("ppo", dict(env="batched/Pendulum-v1", num_envs=8, num_steps=32, num_minibatches=2, total_timesteps=512,
                 normalize_obs=True, normalize_reward=True, randomize="gravity=9:11,max_torque=1.5:2.0")),
    ("reinforce", dict(env="batched/Acrobot-v1", num_envs=16, num_steps=32, total_timesteps=512, normalize_obs=True)),
]


def make_cfg(algo, overrides, run_dir, **more):
    module = algos.get(algo)
    return module, module.Config(**{**overrides, "eval_every": 256, "eval_episodes": 2, "checkpoint_every": 1,
                                    "run_dir": str(run_dir), **more})


@pytest.mark.parametrize("algo, overrides", CASES, ids=[f"{a}-{o['env']}" for a, o in CASES])
def test_smoke_run_folder_and_parameters_change(tmp_path, algo, overrides):
    module, cfg = make_cfg(algo, overrides, tmp_path / "run")
    torch.manual_seed(cfg.seed)
    from rung.envs import make_env

    initial = module.make_agent(cfg, make_env(cfg.env, 1, 0)).state_dict()
    result = module.train(cfg)
    d = result.run_dir
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "curve.png", "checkpoints/latest.pt", "checkpoints/best.pt"):
        assert (d / name).exists(), name
    assert list(d.glob("events.out.tfevents.*"))
    summary = json.loads((d / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys() and summary["algo"] == algo and summary["total_timesteps"] == 512
    assert yaml.safe_load((d / "config.yaml").read_text())["algo"] == algo
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    losses = [r["losses/policy"] for r in rows if "losses/policy" in r]
    assert losses and all(map(lambda x: x == x and abs(x) < 1e6, losses))
    assert any("eval/mean_return" in r for r in rows)
    final = checkpoint.load(d / "checkpoints" / "latest.pt")["agent"]
    for name, before in initial.items():
        assert not torch.equal(before, final[name]), f"{name} did not change"


@pytest.mark.parametrize("algo, overrides", [CASES[0], CASES[2], CASES[5]], ids=["ppo", "reinforce", "ppo-batched"])
def test_same_seed_same_result(tmp_path, algo, overrides):
    module, a = make_cfg(algo, overrides, tmp_path / "a")
    b = dataclasses.replace(a, run_dir=str(tmp_path / "b"))
    c = dataclasses.replace(a, run_dir=str(tmp_path / "c"), seed=2)
    pa, pb, pc = (module.train(cfg).agent.state_dict() for cfg in (a, b, c))
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)


class Crash(Exception):
    pass


@pytest.mark.parametrize("case", [0, 5], ids=["gymnasium", "batched"])
def test_crash_after_checkpoint_resumes_to_the_same_parameters(tmp_path, monkeypatch, case):
    """Crash right after the checkpoint at step 512 of 1024, resume, and compare with one
    uninterrupted run (in process; the SIGKILL version of this is in test_resume.py)."""
    from rung.run import Run

    algo, overrides = CASES[case]
    module, full = make_cfg(algo, {**overrides, "normalize_obs": True}, tmp_path / "full", total_timesteps=1024)
    ref = module.train(full).agent.state_dict()
    crashed = dataclasses.replace(full, run_dir=str(tmp_path / "crashed"))
    original = Run.maybe_checkpoint

    def crash_at_512(self, iteration, step, modules, envs):
        original(self, iteration, step, modules, envs)
        if step == 512:
            raise Crash

    monkeypatch.setattr(Run, "maybe_checkpoint", crash_at_512)
    with pytest.raises(Crash):
        module.train(crashed)
    monkeypatch.setattr(Run, "maybe_checkpoint", original)
    resumed = module.train(crashed, resume=True).agent.state_dict()
    assert all(torch.equal(ref[k], resumed[k]) for k in ref)


def test_the_value_clip_is_not_annealed_with_the_policy_clip(tmp_path, monkeypatch):
    # In return units: shrunk toward 0 with the policy's clip, it would freeze the critic late in training.
    from rung.algos import ppo

    seen = []
    real = ppo.value_loss

    def recording(values, returns, old_values, clip):
        seen.append(clip)
        return real(values, returns, old_values, clip)

    monkeypatch.setattr(ppo, "value_loss", recording)
    cfg = ppo.Config(env="CartPole-v1", num_envs=4, num_steps=32, total_timesteps=512, update_epochs=1,
                     clip_vloss=True, anneal_clip=True, clip_coef=0.3, eval_every=0, run_dir=str(tmp_path / "r"))
    ppo.train(cfg)
    assert len(seen) == 4 and set(seen) == {0.3}


def test_a_diverged_run_stops_with_one_line_naming_the_fix(tmp_path, monkeypatch):
    # Once the weights are NaN the policy still "samples" (argmax over NaN), so nothing else
    # would stop the run: it would go on logging NaN to the end.
    from rung.algos import ppo
    from rung.errors import UserError

    real = ppo.ppo_loss

    def poisoned(*a, **k):
        loss, stats = real(*a, **k)
        return loss * float("nan"), stats

    monkeypatch.setattr(ppo, "ppo_loss", poisoned)
    cfg = ppo.Config(env="batched/CartPole-v1", num_envs=8, num_steps=16, total_timesteps=1024, eval_every=0,
                     run_dir=str(tmp_path / "r"))
    with pytest.raises(UserError, match=r"training diverged at step 128: losses/policy is nan; lower --learning-rate"):
        ppo.train(cfg)
