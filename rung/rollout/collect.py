"""Filling rollout storage from a vector env. The envs reset themselves; what this loop knows of
auto-reset is the final observation, which it turns into V(final obs) for truncated steps."""

from __future__ import annotations

import torch

from rung.rollout.storage import RolloutStorage
from rung.types import Policy, VecEnv


@torch.no_grad()
def collect_rollout(env: VecEnv, agent: Policy, storage: RolloutStorage, obs: torch.Tensor,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[float], list[int]]:
    """Run `storage.num_steps` steps from `obs`. Returns the observation after the rollout and
    the returns and lengths of the episodes that ended during it."""
    for t in range(storage.num_steps):
        storage.obs[t] = obs
        action, logprob, value = agent.act(obs)
        storage.actions[t] = action
        storage.logprobs[t] = logprob
        storage.values[t] = value
        step = env.step(action)
        storage.rewards[t] = step.reward.to(device)
        storage.terminated[t] = step.terminated.to(device)
        storage.truncated[t] = step.truncated.to(device)
        storage.episode_return[t] = step.episode_return.to(device)
        storage.episode_length[t] = step.episode_length.to(device)
        trunc = step.truncated.to(device)
        if trunc.is_cuda:
            # Asking whether any env was truncated would stall the GPU stream; computing V for
            # every env and masking costs one small forward instead.
            storage.final_values[t] = torch.where(trunc, agent.value(step.final_obs.to(device)), 0.0)
        else:
            storage.final_values[t] = 0.0
            if trunc.any():
                storage.final_values[t, trunc] = agent.value(step.final_obs.to(device)[trunc])
        obs = step.obs.to(device)
    return (obs, *storage.episodes())
