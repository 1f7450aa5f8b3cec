"""Targets and losses of value-based and actor-critic off-policy methods: tensors in, tensors
out. `terminated` is 1.0 where the MDP ended (no bootstrap); a time-limit truncation is not
terminal, so the buffer stores the final observation and these targets bootstrap from it."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F


def dqn_target(next_q_target: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor, gamma: float,
               next_q_online: torch.Tensor | None = None) -> torch.Tensor:
    """r + gamma * (1 - terminated) * Q_target(s', a'). Next-state Q-values are (B, A).

    With `next_q_online`, double DQN (van Hasselt et al. 2016): the online network picks a' and
    the target network values it, which removes most of max's overestimation bias. Without it,
    a' = argmax of the target network itself (Mnih et al. 2015)."""
    if next_q_online is None:
        next_v = next_q_target.max(-1).values
    else:
        next_v = next_q_target.gather(-1, next_q_online.argmax(-1, keepdim=True)).squeeze(-1)
    return rewards + gamma * (1.0 - terminated) * next_v


def td_loss(q: torch.Tensor, target: torch.Tensor, kind: Literal["mse", "huber"] = "mse"
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-element regression of Q(s, a) onto a fixed target (the target carries no gradient).
    Huber (smooth L1, delta 1) is DQN's choice: large TD errors early on do not blow up the step."""
    target = target.detach()
    loss = F.smooth_l1_loss(q, target, reduction="none") if kind == "huber" else (q - target).pow(2)
    return loss, {"q": q.detach().mean()}


def critic_ensemble_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Half the summed per-critic MSE of q (n_critics, B) against a fixed target (B,): the scale
    of SB3's critic loss, so learning rates carry over between the two."""
    return 0.5 * (q - target.detach()).pow(2).mean(1).sum()


def clipped_double_q_target(next_qs: torch.Tensor, rewards: torch.Tensor, terminated: torch.Tensor,
                            gamma: float) -> torch.Tensor:
    """r + gamma * (1 - terminated) * min_i Q_i(s', a'), with next_qs (n_critics, B).

    TD3's clipped double-Q (Fujimoto et al. 2018): the minimum of two critics counters the
    overestimation that a deterministic actor exploits. With one critic it is DDPG's target."""
    return rewards + gamma * (1.0 - terminated) * next_qs.min(0).values


def smoothed_target_action(target_action: torch.Tensor, noise: torch.Tensor, noise_clip: float | torch.Tensor,
                           low: torch.Tensor | float, high: torch.Tensor | float) -> torch.Tensor:
    """TD3's target-policy smoothing: a' = clip(mu'(s') + clip(noise, -c, c), low, high), so the
    critic's target averages over nearby actions instead of fitting a narrow peak. `noise` is
    drawn by the caller (already scaled), which keeps this function deterministic."""
    noise = torch.maximum(torch.minimum(noise, torch.as_tensor(noise_clip)), -torch.as_tensor(noise_clip))
    return torch.maximum(torch.minimum(target_action + noise, torch.as_tensor(high)), torch.as_tensor(low))


def soft_q_target(next_qs: torch.Tensor, next_logprob: torch.Tensor, alpha: torch.Tensor | float,
                  rewards: torch.Tensor, terminated: torch.Tensor, gamma: float) -> torch.Tensor:
    """SAC's soft target (Haarnoja et al. 2018): r + gamma * (1 - terminated) *
    (min_i Q_i(s', a') - alpha * log pi(a'|s')), with a' ~ pi(.|s'); next_qs (n_critics, B)."""
    return rewards + gamma * (1.0 - terminated) * (next_qs.min(0).values - alpha * next_logprob)
