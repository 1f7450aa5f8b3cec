"""Filling rollout storage from a vector env. The envs reset themselves; what this loop knows of
auto-reset is the final observation, which it turns into V(final obs) for truncated steps."""

from __future__ import annotations

import torch

from rung.rollout.storage import RolloutStorage
from rung.types import Policy, VecEnv


# inference_mode rather than no_grad: it skips autograd's version counting and view tracking on
# every tensor made, which took a sixth off a batched CartPole step (a few dozen tiny ops, each
# paying that overhead). What the loop creates cannot enter autograd later; it only writes into
# storage (allocated outside, so its tensors train normally) and into the env's own state.
@torch.inference_mode()
def collect_rollout(env: VecEnv, agent: Policy, storage: RolloutStorage, obs: torch.Tensor,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, list[float], list[int]]:
    """Run `storage.num_steps` steps from `obs`. Returns the observation after the rollout and
    the returns and lengths of the episodes that ended during it."""
    storage.final_values.zero_()  # V(final obs) is written below only where a step truncated
    for row in storage.at:
        # copy_ moves and converts as `storage.x[t] = v` would (a gymnasium env's tensors are on
        # the CPU, its episode returns float64).
        row.obs.copy_(obs)
        action, logprob, value = agent.act(obs)
        row.actions.copy_(action)
        row.logprobs.copy_(logprob)
        row.values.copy_(value)
        step = env.step(action)
        row.rewards.copy_(step.reward)
        row.terminated.copy_(step.terminated)
        row.truncated.copy_(step.truncated)
        row.episode_return.copy_(step.episode_return)
        row.episode_length.copy_(step.episode_length)
        trunc = step.truncated.to(device)
        if trunc.is_cuda:
            # Asking whether any env was truncated would stall the GPU stream; computing V for
            # every env and masking costs one small forward instead.
            row.final_values.copy_(torch.where(trunc, agent.value(step.final_obs.to(device)), 0.0))
        elif trunc.any():
            row.final_values[trunc] = agent.value(step.final_obs.to(device)[trunc])
        obs = step.obs.to(device)
    return (obs, *storage.episodes())


@torch.no_grad()
def step_into_buffer(env: VecEnv, obs: torch.Tensor, actions: torch.Tensor, buffer, episodes: list[tuple[float, int]],
                     successes: list[float] | None = None) -> torch.Tensor:
    """One env step for off-policy learning: store (obs, action, reward, next obs, terminated)
    in `buffer` and return the observation to act from next.

    The stored next observation is the one the action led to, which after an auto-reset is
    `final_obs`, not the new episode's first observation. Only termination is stored: a
    truncated transition bootstraps from its final observation like any other. Episodes that
    ended are appended to `episodes` as (return, length), and the env's success flags to
    `successes` where it reports them."""
    step = env.step(actions)
    done = step.done
    buffer.add(obs, actions, step.reward, step.final_obs, step.terminated.float(), done)
    if bool(done.any()):
        episodes.extend(zip(step.episode_return[done].tolist(), step.episode_length[done].tolist()))
        if successes is not None and getattr(step, "success", None) is not None:
            successes.extend(step.success[done].float().tolist())
    return step.obs


def random_actions(env: VecEnv, device: torch.device | str = "cpu") -> torch.Tensor:
    """Uniform actions over the env's action space, from the global torch RNG (seeded and saved
    with checkpoints): the warm-up before learning starts."""
    if env.discrete:
        return torch.randint(0, env.action_dim, (env.num_envs,), device=device)
    low = torch.as_tensor(env.action_low, dtype=torch.float32, device=device)
    high = torch.as_tensor(env.action_high, dtype=torch.float32, device=device)
    return low + (high - low) * torch.rand(env.num_envs, env.action_dim, device=device)
