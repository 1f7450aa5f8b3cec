"""Environments written as torch tensor operations: thousands of copies step as one operation,
on the CPU or a GPU (the idea of Isaac Gym, for every machine).

    env = rung.envs.batched.make("CartPole-v1", num_envs=4096, device="cuda")
"""

from __future__ import annotations

import difflib
from typing import Any

import torch

from rung.envs.batched.base import BatchedEnv
from rung.envs.batched.classic import Acrobot, CartPole, MountainCar, MountainCarContinuous, Pendulum
from rung.errors import UserError

PREFIX = "batched/"
ENVS: dict[str, type[BatchedEnv]] = {cls.name: cls for cls in (CartPole, Acrobot, MountainCar, MountainCarContinuous, Pendulum)}


def make(name: str, num_envs: int, device: torch.device | str = "cpu", seed: int = 0, **kwargs: Any) -> BatchedEnv:
    """A batched env by gymnasium id, with or without the `batched/` prefix."""
    check_name(name)
    return ENVS[name.removeprefix(PREFIX)](num_envs, seed, device, **kwargs)


def check_name(name: str) -> None:
    """A one-line UserError for a name with no batched env, naming the closest one."""
    key = name.removeprefix(PREFIX)
    if key not in ENVS:
        close = difflib.get_close_matches(key, list(ENVS), n=1)
        hint = f"did you mean {PREFIX}{close[0]}?" if close else f"choose one of {', '.join(PREFIX + k for k in ENVS)}"
        raise UserError(f"unknown batched environment {name!r}; {hint}")


def parse_randomize(spec: str) -> dict[str, tuple[float, float]]:
    """'pole_length=0.4:0.6,gravity=9.0:10.6' -> {'pole_length': (0.4, 0.6), 'gravity': (9.0, 10.6)}."""
    out: dict[str, tuple[float, float]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        try:
            key, rng = item.split("=")
            low, high = (float(v) for v in rng.split(":"))
        except ValueError:
            raise UserError(f"--randomize item {item!r} is not NAME=LOW:HIGH (e.g. pole_length=0.4:0.6)") from None
        out[key.strip()] = (low, high)
    return out


__all__ = ["BatchedEnv", "ENVS", "make", "parse_randomize", "CartPole", "Acrobot", "MountainCar",
           "MountainCarContinuous", "Pendulum"]
