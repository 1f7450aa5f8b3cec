"""Protocols: what the library expects of the objects it is handed."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from rung.batch import EnvStep


class VecEnv(Protocol):
    """N environment copies stepped together, tensors in and out, auto-reset inside `step`."""

    num_envs: int
    obs_shape: tuple[int, ...]
    discrete: bool
    action_dim: int  # number of actions if discrete, else the action vector's size

    def reset(self) -> torch.Tensor: ...  # (N, *obs_shape)
    def step(self, actions: torch.Tensor) -> EnvStep: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> bool: ...  # True: the running episodes go on
    def close(self) -> None: ...


class Policy(Protocol):
    def act(self, obs: torch.Tensor, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(action, logprob, value) for a batch of observations."""
        ...

    def action(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """The action alone (evaluation)."""
        ...
