"""Losses that learn from recorded actions or from a reference policy: behaviour cloning, the
behaviour-cloning term of TD3+BC, and the divergences that hold a fine-tuned policy near the one
it started from (--init-from), with the schedule that lets go of it. Per sample, for
minimisation; tensors in, (loss (B,), stats) out."""

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


def kl_categorical(logp_ref: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL(ref || pi) = sum_a p_ref(a) (log p_ref(a) - log pi(a)), exact, from log-probabilities
    (B, A) such as CategoricalHead returns; (B,) out. The reference comes first: the divergence
    is large where the reference policy puts mass the current one has dropped, which is what
    forgetting a cloned policy looks like."""
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)
    return kl, {"kl": kl.detach().mean()}


def kl_diag_gaussian(mean_ref: torch.Tensor, log_std_ref: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KL(N(mean_ref, std_ref^2) || N(mean, std^2)) in closed form, summed over the action dims:
    sum_d log(std / std_ref) + (std_ref^2 + (mean_ref - mean)^2) / (2 std^2) - 1/2.
    Means (B, act_dim); log stds (B, act_dim) or broadcast from (act_dim,); (B,) out."""
    z = (mean_ref - mean) * torch.exp(-log_std)
    kl = (log_std - log_std_ref + 0.5 * (torch.exp(2 * (log_std_ref - log_std)) + z.pow(2)) - 0.5).sum(-1)
    return kl, {"kl": kl.detach().mean()}


# The exponential schedule falls 100-fold over its span before the shift that ends it at 0.
EXP_FLOOR = 0.01


def decayed_coef(coef: float, step: int, decay_steps: int, schedule: str = "linear") -> float:
    """`coef` after `step` env steps of a schedule that reaches 0 at `decay_steps` and stays
    there; decay_steps 0 keeps it constant. With t = step / decay_steps:
    linear coef (1 - t); exponential coef (r^t - r) / (1 - r), r = 0.01, a 100-fold exponential
    fall shifted to meet 0 at t = 1 rather than approach it forever (at t = 1/2 it is coef/11,
    where the linear one is coef/2: it lets go of most of the pull early)."""
    if decay_steps <= 0:
        return float(coef)
    t = min(step / decay_steps, 1.0)
    if schedule == "linear":
        return float(coef * (1.0 - t))
    if schedule == "exponential":
        return float(coef * (EXP_FLOOR**t - EXP_FLOOR) / (1.0 - EXP_FLOOR))
    raise ValueError(f"unknown schedule {schedule!r}; use linear or exponential")
