"""Actor losses of off-policy actor-critic methods, per sample, for minimisation."""

from __future__ import annotations

import torch


def deterministic_policy_loss(q: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DDPG/TD3 (Silver et al. 2014): ascend Q(s, mu(s)). q is (B,) from the first critic."""
    return -q, {"actor_q": q.detach().mean()}


def sac_policy_loss(min_q: torch.Tensor, logprob: torch.Tensor, alpha: torch.Tensor | float
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAC's policy loss alpha * log pi(a|s) - min_i Q_i(s, a) with a ~ pi(.|s) reparameterised:
    the KL to the Boltzmann policy of the soft Q-function, up to a constant. All (B,)."""
    return alpha * logprob - min_q, {"entropy": -logprob.detach().mean()}


def temperature_loss(log_alpha: torch.Tensor, logprob: torch.Tensor, target_entropy: float
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Automatic entropy tuning (Haarnoja et al. 2018b): raises alpha while the policy's entropy
    (-log pi) is below the target, lowers it while above. Descending on log alpha keeps alpha
    positive; log-probs are constants here."""
    return -log_alpha * (logprob.detach() + target_entropy), {"alpha": log_alpha.detach().exp()}
