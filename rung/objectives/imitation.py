"""Losses that learn from recorded actions: behaviour cloning, and the behaviour-cloning term
of TD3+BC. Per sample, for minimisation; tensors in, (loss (B,), stats) out."""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2 * math.pi)


def bc_discrete_loss(logits_or_logp: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy -log pi(a|s) of the recorded actions, logits (B, A), actions (B,) integers.
    log_softmax is idempotent, so raw logits and log-probabilities (what CategoricalHead returns)
    give the same loss."""
    logp = torch.log_softmax(logits_or_logp, dim=-1)
    actions = actions.long()
    loss = -logp.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    return loss, {"accuracy": (logp.argmax(-1) == actions).float().mean().detach()}


def bc_gaussian_nll_loss(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the recorded actions under a diagonal Gaussian, summed over the
    action dims: sum_d (a - mu)^2 / (2 sigma^2) + log sigma + log(2 pi) / 2. All (B, act_dim);
    log_std may be broadcast from (act_dim,). Fits the spread too, so the policy's sampling noise
    ends near the demonstrator's own."""
    z = (actions - mean) * torch.exp(-log_std)
    loss = (0.5 * z.pow(2) + log_std + 0.5 * LOG_2PI).sum(-1)
    stats = {"mse": (actions - mean).pow(2).sum(-1).mean().detach(), "std": log_std.detach().exp().mean()}
    return loss, stats


def bc_mse_loss(pred: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Squared distance ||pred - a||^2 summed over the action dims, (B, act_dim) -> (B,): the
    Gaussian NLL with the std held at 1, up to the factor 1/2 and a constant."""
    loss = (pred - actions).pow(2).sum(-1)
    return loss, {"mse": loss.detach().mean()}


def td3_bc_actor_loss(q: torch.Tensor, pi_actions: torch.Tensor, data_actions: torch.Tensor, alpha: float,
                      q_abs_mean: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TD3+BC's actor loss (Fujimoto & Gu 2021): -lambda * Q(s, pi(s)) + (pi(s) - a)^2 with
    lambda = alpha / mean|Q|, a constant (no gradient). q (B,) from the first critic, actions
    (B, act_dim).

    Dividing by mean|Q| makes alpha independent of the reward scale. The squared error is averaged
    over the action dims, as in the authors' code (F.mse_loss), not summed as the paper's equation
    reads: alpha = 2.5 was tuned that way, and a sum would weight the cloning term act_dim times
    more on high-dimensional tasks. `q_abs_mean` defaults to this batch's; pass the global one when
    the batch is split across processes, so that the split does not change the loss."""
    if q_abs_mean is None:
        q_abs_mean = q.abs().mean()
    lam = alpha / q_abs_mean.detach()
    bc = (pi_actions - data_actions).pow(2).mean(-1)
    return -lam * q + bc, {"lambda": lam, "bc_mse": bc.detach().mean(), "actor_q": q.detach().mean()}
