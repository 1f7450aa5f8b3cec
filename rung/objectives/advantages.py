"""Advantage estimators as pure functions over (T, N) tensors.

`terminated` and `truncated` stay apart: both stop the recursion at an episode boundary, but only
termination zeroes the bootstrap value. `next_values[t]` is V of the observation that followed step
t, which for a step that ended an episode is V(final observation), not V(reset observation).
"""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        truncated: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    All inputs (T, N); returns (advantages, returns), each (T, N), with returns = advantages + values.
    """
    not_term = 1.0 - terminated.float()
    not_done = 1.0 - (terminated | truncated).float()
    deltas = rewards + gamma * next_values * not_term - values
    advantages = torch.empty_like(rewards)
    carry = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        carry = deltas[t] + gamma * lam * not_done[t] * carry
        advantages[t] = carry
    return advantages, advantages + values


def discounted_returns(rewards: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
                       truncated: torch.Tensor, gamma: float) -> torch.Tensor:
    """Monte-Carlo returns within the rollout, bootstrapped from V where an episode was cut by a
    time limit or by the end of the rollout. Equals `gae(..., lam=1)` returns. (T, N) -> (T, N)."""
    not_term = 1.0 - terminated.float()
    done = terminated | truncated
    returns = torch.empty_like(rewards)
    carry = next_values[-1]
    for t in range(rewards.shape[0] - 1, -1, -1):
        carry = rewards[t] + gamma * not_term[t] * torch.where(done[t], next_values[t], carry)
        returns[t] = carry
    return returns


def normalize(x: torch.Tensor, mean: torch.Tensor | float, std: torch.Tensor | float, eps: float = 1e-8) -> torch.Tensor:
    """Standardise with statistics passed in, so that under DDP they can be the global batch's."""
    return (x - mean) / (std + eps)
