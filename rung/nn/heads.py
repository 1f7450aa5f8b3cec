"""Action heads. Log-probabilities and entropies are written out rather than taken from
torch.distributions: the formulas are two lines each and skip its argument checking, which
costs more than the network itself at CartPole sizes."""

from __future__ import annotations

import math

import torch
from torch import nn

from rung.nn.mlp import layer

LOG_2PI = math.log(2 * math.pi)


class CategoricalHead(nn.Module):
    def __init__(self, in_dim: int, num_actions: int):
        super().__init__()
        # A small gain starts the policy near uniform, so early updates do not collapse it.
        self.logits = layer(in_dim, num_actions, gain=0.01)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.logits(h), dim=-1)  # (B, A) log-probs

    @staticmethod
    def sample(logp: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        if deterministic:
            return logp.argmax(-1)
        # The exponential race (argmax of p / E with E ~ Exp(1)) is exactly what torch.multinomial
        # does for one sample: the same draws from the same generator, the same actions. Written
        # out, it skips multinomial's argument checks, two host syncs a call (a stall of the
        # stream on a GPU) and half its time on a CPU. A diverged (NaN) policy, which those
        # checks caught, is caught where its losses are logged.
        p = logp.exp()
        return torch.div(p, torch.empty_like(p).exponential_()).argmax(-1)

    @staticmethod
    def log_prob(logp: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return logp.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def entropy(logp: torch.Tensor) -> torch.Tensor:
        return -(logp.exp() * logp).sum(-1)


class GaussianHead(nn.Module):
    """Diagonal Gaussian with a state-independent log standard deviation."""

    def __init__(self, in_dim: int, action_dim: int, log_std_init: float = 0.0):
        super().__init__()
        self.mean = layer(in_dim, action_dim, gain=0.01)
        self.log_std = nn.Parameter(torch.full((action_dim,), log_std_init))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean(h)
        return mean, self.log_std.expand_as(mean)

    @staticmethod
    def sample(params: tuple[torch.Tensor, torch.Tensor], deterministic: bool = False) -> torch.Tensor:
        mean, log_std = params
        if deterministic:
            return mean
        return mean + log_std.exp() * torch.randn_like(mean)

    @staticmethod
    def log_prob(params: tuple[torch.Tensor, torch.Tensor], actions: torch.Tensor) -> torch.Tensor:
        mean, log_std = params
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)

    @staticmethod
    def entropy(params: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        _, log_std = params
        return (0.5 + 0.5 * LOG_2PI + log_std).sum(-1)
