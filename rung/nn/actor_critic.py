"""Separate actor and critic MLPs, the default of the PPO and REINFORCE implementations that
reach published scores on classic control and MuJoCo."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from rung.nn.heads import CategoricalHead, GaussianHead
from rung.nn.mlp import layer, mlp


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, hidden: tuple[int, ...] = (64, 64),
                 activation: Literal["tanh", "relu", "elu"] = "tanh", log_std_init: float = 0.0,
                 actor_hidden: tuple[int, ...] | None = None):
        """`actor_hidden`: the actor's widths when they differ from the critic's `hidden`; ()
        makes the actor linear in the observation."""
        super().__init__()
        self.discrete = discrete
        actor_hidden = hidden if actor_hidden is None else actor_hidden
        self.actor_body = mlp(obs_dim, actor_hidden, activation)
        self.critic = nn.Sequential(mlp(obs_dim, hidden, activation), layer(hidden[-1] if hidden else obs_dim, 1, gain=1.0))
        feat = actor_hidden[-1] if actor_hidden else obs_dim
        self.head: CategoricalHead | GaussianHead = (
            CategoricalHead(feat, action_dim) if discrete else GaussianHead(feat, action_dim, log_std_init))

    def compile_networks(self) -> None:
        """torch.compile the MLPs in place (state_dict keys unchanged, so checkpoints still load)."""
        self.actor_body.compile()
        self.critic.compile()

    def action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The action alone, without the critic: what evaluation needs."""
        return self.head.sample(self.dist_params(obs), deterministic)

    def dist_params(self, obs: torch.Tensor):
        return self.head(self.actor_body(obs))

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs).squeeze(-1)  # (B,)

    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, log-prob, value) for a batch of observations (B, obs_dim)."""
        params = self.dist_params(obs)
        action = self.head.sample(params, deterministic)
        return action, self.head.log_prob(params, action), self.value(obs)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The training pass is forward, so that DistributedDataParallel's hooks see it.
        return self.evaluate(obs, actions)

    def evaluate(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log-prob, entropy, value) of given actions, each (B,)."""
        params = self.dist_params(obs)
        return self.head.log_prob(params, actions), self.head.entropy(params), self.value(obs)


def actor_widths(cfg) -> tuple[int, ...]:
    """The actor's hidden widths a config asks for: its actor_hidden_sizes where it has one (0
    meaning none: a linear actor), else its hidden_sizes."""
    own = getattr(cfg, "actor_hidden_sizes", None)
    return tuple(cfg.hidden_sizes) if own is None else tuple(w for w in own if w)


def make_actor_critic(cfg, env) -> ActorCritic:
    """The actor-critic for `env` from a config's hidden_sizes (and actor_hidden_sizes, where it
    has them), activation and log_std_init."""
    return ActorCritic(env.obs_shape[0], env.action_dim, env.discrete, tuple(cfg.hidden_sizes), cfg.activation,
                       cfg.log_std_init, actor_hidden=actor_widths(cfg))
