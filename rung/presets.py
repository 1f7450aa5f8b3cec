"""Presets: tuned settings for an env and algorithm, as Python values, with the published target
they are meant to reach. `rung train --preset NAME` starts from one; flags override it.

Budgets and measured results are in BENCHMARKS.md; the commands that measured them are in the
recipe READMEs under recipes/."""

from __future__ import annotations

import difflib

from dataclasses import dataclass, field
from typing import Any

from rung.errors import UserError


@dataclass(frozen=True)
class Preset:
    name: str
    algo: str
    target: float
    """The published score this preset is held to: mean eval return, or eval success rate where
    `metric` says so (goal-conditioned envs, whose return mostly counts steps to the goal)."""
    source: str
    overrides: dict[str, Any] = field(default_factory=dict)
    metric: str = "return"


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("cartpole-ppo", "ppo", 475, "Gymnasium's CartPole-v1 reward threshold; settings from RL Zoo",
           {"env": "CartPole-v1", "total_timesteps": 100_000}),
    Preset("cartpole-reinforce", "reinforce", 475, "Gymnasium's CartPole-v1 reward threshold",
           {"env": "CartPole-v1", "total_timesteps": 300_000}),
    Preset("acrobot-ppo", "ppo", -100, "Gymnasium's Acrobot-v1 reward threshold; settings after RL Zoo",
           {"env": "Acrobot-v1", "total_timesteps": 150_000, "num_envs": 16, "num_steps": 256, "gamma": 0.99,
            "gae_lambda": 0.94, "update_epochs": 4, "num_minibatches": 64, "learning_rate": 3e-4,
            "anneal_lr": False, "anneal_clip": False, "normalize_obs": True, "normalize_reward": True}),
    Preset("mountaincar-ppo", "ppo", -110, "Gymnasium's MountainCar-v0 reward threshold; settings after RL Zoo",
           {"env": "MountainCar-v0", "total_timesteps": 600_000, "num_envs": 16, "num_steps": 16, "gamma": 0.99,
            "gae_lambda": 0.98, "update_epochs": 4, "num_minibatches": 4, "learning_rate": 3e-4,
            "anneal_lr": True, "anneal_clip": False, "normalize_obs": True, "normalize_reward": True,
            "eval_every": 25_000}),
    Preset("pendulum-ppo", "ppo", -200, "SB3 RL Zoo's PPO Pendulum-v1 result",
           {"env": "Pendulum-v1", "total_timesteps": 200_000, "num_envs": 4, "num_steps": 1024, "gamma": 0.9,
            "gae_lambda": 0.95, "update_epochs": 10, "num_minibatches": 64, "learning_rate": 5e-4,
            "anneal_lr": True, "anneal_clip": False, "normalize_obs": True, "normalize_reward": False}),
    # Searched for wall-clock to solved on the 2-core CPU (BENCHMARKS.md). A linear actor:
    # CartPole's balancing controller is linear in the state, and with a 64x64 actor 1-3 seeds in
    # 5 sat for 100k+ steps on a plateau (pole held, cart drifting off the track) that no linear
    # actor of the search reached. The critic keeps its hidden layers. On a CPU few envs win:
    # each gradient step costs a millisecond of fixed overhead, so the 16k steps a solve takes
    # are best spent on few, mid-sized minibatches.
    Preset("batched-cartpole-ppo", "ppo", 475, "Gymnasium's CartPole-v1 reward threshold; settings searched here",
           {"env": "batched/CartPole-v1", "total_timesteps": 1_000_000, "num_envs": 64, "num_steps": 32,
            "num_minibatches": 2, "update_epochs": 4, "learning_rate": 1e-2, "anneal_lr": False, "anneal_clip": False,
            "gamma": 0.98, "gae_lambda": 0.95, "max_grad_norm": 10.0, "normalize_obs": True,
            "actor_hidden_sizes": (0,), "eval_every": 16_384}),
    # Off-policy presets: RL Zoo's tuned settings for the env, with its published result.
    Preset("pendulum-sac", "sac", -200, "SB3 RL Zoo's SAC Pendulum-v1 (about -150 at 20k steps)",
           {"env": "Pendulum-v1", "total_timesteps": 20_000, "learning_rate": 1e-3, "eval_every": 2_000}),
    Preset("pendulum-td3", "td3", -200, "SB3 RL Zoo's TD3 Pendulum-v1 (about -150 at 20k steps)",
           {"env": "Pendulum-v1", "total_timesteps": 20_000, "learning_rate": 1e-3, "gamma": 0.98, "buffer_size": 200_000,
            "learning_starts": 10_000, "exploration_noise": 0.1, "hidden_sizes": (400, 300), "eval_every": 2_000}),
    Preset("pendulum-ddpg", "ddpg", -200, "SB3 RL Zoo's DDPG Pendulum-v1 (about -150 at 20k steps)",
           {"env": "Pendulum-v1", "total_timesteps": 20_000, "learning_rate": 1e-3, "gamma": 0.98, "buffer_size": 200_000,
            "learning_starts": 10_000, "exploration_noise": 0.1, "hidden_sizes": (400, 300), "eval_every": 2_000}),
    Preset("cartpole-dqn", "dqn", 475, "Gymnasium's CartPole-v1 reward threshold; settings from RL Zoo",
           {"env": "CartPole-v1", "total_timesteps": 50_000}),
    Preset("fetchreach-her", "sac", 0.95, "success rate; SB3 RL Zoo's SAC+HER FetchReach reaches about 1.0 by 20k steps",
           {"env": "FetchReach-v4", "her": True, "total_timesteps": 20_000, "buffer_size": 1_000_000,
            "batch_size": 256, "gamma": 0.95, "learning_rate": 1e-3, "learning_starts": 1_000,
            "hidden_sizes": (64, 64), "n_critics": 1, "normalize_obs": True, "eval_every": 2_000,
            "target_success_rate": 0.95},
           metric="success_rate"),
    Preset("fetchpush-her", "sac", 0.9, "success rate; HER (Andrychowicz et al. 2017) passes 0.9 on push; a long run",
           {"env": "FetchPush-v4", "her": True, "total_timesteps": 1_000_000, "buffer_size": 1_000_000,
            "batch_size": 2048, "gamma": 0.95, "tau": 0.05, "learning_rate": 1e-3, "learning_starts": 1_000,
            "hidden_sizes": (512, 512, 512), "normalize_obs": True, "eval_every": 20_000,
            "target_success_rate": 0.9},
           metric="success_rate"),
    Preset("halfcheetah-sac", "sac", 9500, "published SAC HalfCheetah 1M-step return (Haarnoja et al. 2018; SB3 RL Zoo)",
           {"env": "HalfCheetah-v5", "total_timesteps": 1_000_000, "target_return": 9500, "learning_starts": 10_000, "learning_rate": 3e-4,
            "eval_every": 20_000}),
    Preset("ant-td3", "td3", 5800, "published TD3 Ant 1M-step return (SB3 RL Zoo)",
           {"env": "Ant-v5", "total_timesteps": 1_000_000, "target_return": 5800, "learning_starts": 10_000, "learning_rate": 1e-3,
            "exploration_noise": 0.1, "hidden_sizes": (400, 300), "eval_every": 20_000}),
    Preset("humanoid-sac", "sac", 5000, "published SAC Humanoid 1M-step return, 5000-6200 (Haarnoja et al. 2018; SB3 RL Zoo)",
           {"env": "Humanoid-v5", "total_timesteps": 1_000_000, "target_return": 5000, "learning_starts": 10_000, "learning_rate": 3e-4,
            "eval_every": 20_000}),
]}


def for_env(algo: str, env: str) -> Preset | None:
    """The preset tuned for `env` and `algo`, if there is one."""
    return next((p for p in PRESETS.values() if p.algo == algo and p.overrides.get("env") == env), None)


def get(name: str) -> Preset:
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        raise UserError(f"unknown preset {name!r}; " + (f"did you mean {close[0]}?" if close else
                                                        f"choose one of: {', '.join(PRESETS)} (see 'rung list')"))
    return PRESETS[name]
