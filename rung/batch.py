"""Typed tensor batches passed between envs, storage and losses. Shapes are in the comments:
N envs, T steps per env, B flattened samples."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class EnvStep:
    """What one vectorised env step returns. Envs reset themselves; the observation an episode
    ended on is kept in `final_obs` so that a truncated step can bootstrap from it."""

    obs: torch.Tensor  # (N, *obs_shape) next observation (already reset where done)
    reward: torch.Tensor  # (N,) reward as the learner sees it (normalised if enabled)
    terminated: torch.Tensor  # (N,) bool, the MDP ended
    truncated: torch.Tensor  # (N,) bool, cut by a time limit (and not terminated)
    final_obs: torch.Tensor  # (N, *obs_shape) last obs of the ended episode; equals obs where not done
    # Statistics of the episodes that ended this step, as tensors so that on-device envs need no
    # host copy per step; read them only where `done`.
    episode_return: torch.Tensor  # (N,) undiscounted return of the raw (unnormalised) rewards
    episode_length: torch.Tensor  # (N,) int64
    success: torch.Tensor | None = None  # (N,) bool, the env's info["is_success"] where it reports one

    @property
    def done(self) -> torch.Tensor:
        return self.terminated | self.truncated


@dataclass
class Batch:
    """A flat minibatch for a policy-gradient update."""

    obs: torch.Tensor  # (B, *obs_shape)
    actions: torch.Tensor  # (B,) discrete or (B, act_dim) continuous
    logprobs: torch.Tensor  # (B,) log-prob of the action under the behaviour policy
    values: torch.Tensor  # (B,) V(obs) at collection time
    advantages: torch.Tensor  # (B,)
    returns: torch.Tensor  # (B,) value targets

    def __len__(self) -> int:
        return self.obs.shape[0]

    def index(self, idx: torch.Tensor) -> "Batch":
        return Batch(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})
