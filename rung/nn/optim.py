"""The optimiser every env algorithm uses, and its step written as plain tensor operations for
updates that run inside torch.compile."""

from __future__ import annotations

import torch


def adam(params, lr: float, eps: float = 1e-8) -> torch.optim.Adam:
    # fused: one kernel for the whole update. At rung's network sizes the optimiser step is a
    # large share of a gradient step; fused measured about twice as fast as foreach here (SAC),
    # and for PPO's 64x64 actor-critic it cut the step from 1.46 to 0.37 ms (foreach on this
    # CPU build falls back to a kernel per parameter).
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=True)


def adam_state(opt: torch.optim.Adam) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(param, step, exp_avg, exp_avg_sq) of each parameter of `opt`'s single group, creating the
    state as torch's own first step does. `adam_step_` updates these tensors in place, so the
    optimiser's state_dict (checkpoints, resume) is the same whichever of the two stepped it. Call
    it again after `opt.load_state_dict`, which replaces the tensors."""
    if len(opt.param_groups) != 1:
        raise ValueError("adam_state takes an optimiser with one parameter group")
    group = opt.param_groups[0]
    if group["amsgrad"] or group["maximize"] or group["weight_decay"]:
        raise ValueError("adam_state takes plain Adam (no amsgrad, maximize or weight decay)")
    out = []
    for p in group["params"]:
        state = opt.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        out.append((p, state["step"], state["exp_avg"], state["exp_avg_sq"]))
    return out


def adam_hyper(opt: torch.optim.Adam) -> tuple[float, tuple[float, float], float]:
    """(lr, betas, eps) of `opt`'s single group, as `adam_step_` takes them: read at each step, so
    a learning-rate change made on the optimiser reaches the compiled update."""
    group = opt.param_groups[0]
    return group["lr"], group["betas"], group["eps"]


def adam_step_(state: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]], grads: list[torch.Tensor],
               lr: float, betas: tuple[float, float], eps: float) -> None:
    """One Adam step (Kingma and Ba 2015, torch's placement of eps) on `adam_state`'s tensors, in
    place, with gradients passed in rather than read from `.grad`. Written elementwise so that
    torch.compile fuses it with the update that produced the gradients: on CPU that saved more
    than the fused optimiser kernel costs. Call under torch.no_grad()."""
    beta1, beta2 = betas
    for (p, step, m, v), g in zip(state, grads, strict=True):
        step.add_(1)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (v / (1 - beta2 ** step)).sqrt().add_(eps)
        p.sub_(lr * (m / (1 - beta1 ** step)) / denom)
