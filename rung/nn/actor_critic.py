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
                 activation: Literal["tanh", "relu", "elu"] = "tanh", log_std_init: float = 0.0):
        super().__init__()
        self.discrete = discrete
        self.actor_body = mlp(obs_dim, hidden, activation)
        self.critic = nn.Sequential(mlp(obs_dim, hidden, activation), layer(hidden[-1] if hidden else obs_dim, 1, gain=1.0))
        feat = hidden[-1] if hidden else obs_dim
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


def make_actor_critic(cfg, env) -> ActorCritic:
    """The actor-critic for `env` from a config's hidden_sizes, activation and log_std_init."""
    return ActorCritic(env.obs_shape[0], env.action_dim, env.discrete, cfg.hidden_sizes, cfg.activation, cfg.log_std_init)
