"""Policy-gradient losses: tensors in, (per-element loss, stats) out. Reduce with `.mean()` or
with an explicit global count; stats are detached scalars for logging."""

from __future__ import annotations

import torch


def ppo_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, clip_coef: float,
                  clip_coef_high: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017), negated for minimisation. All (B,), or any
    shape that broadcasts elementwise (per-token (B, T) with advantages (B, 1)).

    The ratio is clipped to [1 - clip_coef, 1 + clip_coef_high]; `clip_coef_high` defaults to
    `clip_coef`. A larger upper bound is DAPO's clip-higher (Yu et al. 2025): it lets the
    probability of an unlikely token with a positive advantage grow further in one update, which
    keeps the policy's entropy from collapsing."""
    high = clip_coef if clip_coef_high is None else clip_coef_high
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + high))
    with torch.no_grad():
        # d > high | -d > low rather than 1 + high < ratio: -(ratio - 1) is exact in floating
        # point, so with equal bounds this is bit-for-bit the |ratio - 1| > clip_coef it replaced.
        d = ratio - 1
        stats = {
            # The k3 estimator of KL(old || new): unbiased and always >= 0 (Schulman 2020).
            "approx_kl": (d - log_ratio).mean(),
            "clipfrac": ((d > high) | (-d > clip_coef)).float().mean(),
        }
    return loss, stats


def value_loss(values: torch.Tensor, returns: torch.Tensor, old_values: torch.Tensor | None = None,
               clip_coef: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Squared error to the returns; with `clip_coef`, PPO's pessimistic clipped variant that
    keeps the new value within clip_coef of the old one. All (B,), or any one shape such as
    per-token (B, T) (reduce those with `masked_aggregate`).

    No factor 1/2: with it, `vf_coef` means half what it means in Stable-Baselines3 and RL Zoo,
    whose tuned settings rung's presets reuse (CleanRL keeps the 1/2; halve its vf_coef to port)."""
    loss = (values - returns).pow(2)
    if clip_coef is not None:
        assert old_values is not None, "clipped value loss needs old_values"
        clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
        loss = torch.maximum(loss, (clipped - returns).pow(2))
    return loss, {}


def entropy_loss(entropy: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative entropy, so that adding `ent_coef *` it to a loss rewards exploration. (B,)."""
    return -entropy, {"entropy": entropy.detach().mean()}


def reinforce_loss(logprobs: torch.Tensor, advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE (Williams 1992): -log pi(a|s) * (G - b). With a learned baseline b = V(s) the
    advantages are G - V; the baseline reduces variance without biasing the gradient. (B,)."""
    return -logprobs * advantages, {}
