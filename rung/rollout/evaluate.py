"""Evaluation: the deterministic policy for a fixed number of whole episodes."""

from __future__ import annotations

import torch

from rung.types import Policy, VecEnv

# Checking "have all envs finished?" copies a flag to the host; on an accelerator that stalls the
# stream, so it is asked every few steps rather than every step.
CHECK_EVERY = 32


# inference_mode, as in collect_rollout: a sixth off each step of an evaluation, whose envs and
# outputs never meet autograd.
@torch.inference_mode()
def evaluate(agent: Policy, env: VecEnv, seed: int, normalizer_state: dict | None = None,
             device: torch.device | str = "cpu", deterministic: bool = True,
             successes: list[float] | None = None) -> list[float]:
    """One episode in each of `env.num_envs` copies, started from seeds seed, seed+1, ... (a
    batched env draws every start state from its one generator, seeded with `seed`).
    Returns the episodes' returns; where the env reports success (goal-conditioned envs) and
    `successes` is given, each episode's final success flag is appended to it.

    Observation statistics come frozen from the training env, so evaluation neither moves them
    nor sees different inputs than training did. Draws nothing from the global torch RNG when
    deterministic, so evaluating does not change a run's training trajectory."""
    if normalizer_state is not None:
        env.normalizer.load_state_dict(normalizer_state)
    env.normalizer.frozen = True
    obs = env.reset(seed=seed).to(device)
    returns = torch.zeros(env.num_envs, dtype=torch.float64, device=device)
    finished = torch.zeros(env.num_envs, dtype=torch.bool, device=device)
    success = torch.zeros(env.num_envs, dtype=torch.float64, device=device)
    reports_success = False
    t = 0
    while True:
        action = agent.action(obs, deterministic)
        step = env.step(action)
        # Follow each env's running figures until its first episode ends, then hold them: at the
        # step an episode ends they are its totals (what they are before does not matter).
        returns = torch.where(finished, returns, step.episode_return.to(device, torch.float64))
        if step.success is not None:
            reports_success = True
            success = torch.where(finished, success, step.success.to(device, torch.float64))
        finished |= step.done.to(device)
        obs = step.obs.to(device)
        t += 1
        if t % CHECK_EVERY == 0 or not finished.is_cuda:
            if bool(finished.all()):
                if successes is not None and reports_success:
                    successes.extend(success.tolist())
                return returns.tolist()
