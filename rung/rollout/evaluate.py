"""Evaluation: the deterministic policy for a fixed number of whole episodes."""

from __future__ import annotations

import numpy as np
import torch

from rung.envs.make import GymVecEnv
from rung.types import Policy


@torch.no_grad()
def evaluate(agent: Policy, env: GymVecEnv, seed: int, normalizer_state: dict | None = None,
             device: torch.device | str = "cpu", deterministic: bool = True) -> list[float]:
    """One episode in each of `env.num_envs` copies, started from seeds seed, seed+1, ...

    Observation statistics come frozen from the training env, so evaluation neither moves them
    nor sees different inputs than training did. Draws nothing from the global torch RNG when
    deterministic, so evaluating does not change a run's training trajectory."""
    if normalizer_state is not None:
        env.normalizer.load_state_dict(normalizer_state)
    env.normalizer.frozen = True
    obs = env.reset(seed=seed).to(device)
    returns = np.full(env.num_envs, np.nan)
    while np.isnan(returns).any():
        action, _, _ = agent.act(obs, deterministic=deterministic)
        step = env.step(action)
        if step.episode_returns:
            ended = torch.nonzero(step.done).squeeze(-1).tolist()
            for i, ret in zip(ended, step.episode_returns):
                if np.isnan(returns[i]):
                    returns[i] = ret
        obs = step.obs.to(device)
    return returns.tolist()
