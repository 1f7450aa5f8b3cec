"""Preallocated on-policy rollout storage, (T, N, ...) tensors reused every iteration."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from rung.batch import Batch


class RolloutStorage:
    FIELDS = ("obs", "actions", "logprobs", "values", "rewards", "terminated", "truncated", "final_values",
              "episode_return", "episode_length")

    def __init__(self, num_steps: int, num_envs: int, obs_shape: tuple[int, ...], discrete: bool,
                 action_dim: int, device: torch.device | str = "cpu"):
        T, N = num_steps, num_envs
        z = lambda *shape, dtype=torch.float32: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        self.obs = z(T, N, *obs_shape)  # (T, N, *obs_shape) observation each action was taken from
        self.actions = z(T, N, dtype=torch.long) if discrete else z(T, N, action_dim)
        self.logprobs = z(T, N)  # (T, N)
        self.values = z(T, N)  # (T, N) V(obs)
        self.rewards = z(T, N)  # (T, N)
        self.terminated = z(T, N, dtype=torch.bool)  # (T, N)
        self.truncated = z(T, N, dtype=torch.bool)  # (T, N)
        # V(final observation) where a step ended an episode by truncation, 0 elsewhere.
        self.final_values = z(T, N)  # (T, N)
        # Raw return and length of the episode that ended at (t, n); read only where done.
        self.episode_return = z(T, N)  # (T, N)
        self.episode_length = z(T, N, dtype=torch.long)  # (T, N)
        self.num_steps, self.num_envs = T, N
        # Step t's slice of every field, made once: writing a step through these is one copy a
        # field, where `storage.obs[t] = x` also indexes, at microseconds a call.
        self.at = [SimpleNamespace(**{name: getattr(self, name)[t] for name in self.FIELDS}) for t in range(T)]

    def episodes(self) -> tuple[list[float], list[int]]:
        """Returns and lengths of the episodes that ended in this rollout, in time order: the one
        host copy of episode statistics per rollout."""
        done = self.terminated | self.truncated
        return self.episode_return[done].tolist(), self.episode_length[done].tolist()

    def next_values(self, last_value: torch.Tensor) -> torch.Tensor:
        """V of the observation that followed each step: the next stored obs within an episode,
        V(final obs) where the step ended one, V(obs after the rollout) on the last step. (T, N)."""
        nxt = torch.cat([self.values[1:], last_value.unsqueeze(0)], dim=0)
        return torch.where(self.terminated | self.truncated, self.final_values, nxt)

    def flatten(self, advantages: torch.Tensor, returns: torch.Tensor) -> Batch:
        """(T, N, ...) -> (T*N, ...) samples for minibatch updates."""
        B = self.num_steps * self.num_envs
        return Batch(
            obs=self.obs.reshape(B, *self.obs.shape[2:]),
            actions=self.actions.reshape(B, *self.actions.shape[2:]),
            logprobs=self.logprobs.reshape(B),
            values=self.values.reshape(B),
            advantages=advantages.reshape(B),
            returns=returns.reshape(B),
        )
