"""What the algorithms that learn from a dataset (bc, td3_bc) share: reading the dataset for an
env, and standardising observations with the dataset's own statistics.

The statistics go into the env's observation normaliser, frozen, not into the agent: that is
where PPO keeps them, so a cloned policy and its statistics carry over to PPO unchanged, and
evaluation, `rung eval` and `rung collect --policy RUN` already feed a normalised env's
observations to the policy. Training feeds the dataset through the same normaliser, so the
network sees the same numbers offline and in the env."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rung.buffers.demos import Trajectories, load
from rung.errors import UserError
from rung.types import VecEnv


def load_dataset(path: str | None, env: VecEnv, env_id: str, algo: str,
                 log: Callable[[str], None] | None = None) -> Trajectories:
    """The trajectories in `path`, checked against `env` (observation size, action kind and
    bounds). A file that names another env id is accepted when its spaces fit (v4 data in a v5
    env is fine), with a line to `log`."""
    if not path:
        raise UserError(f"{algo} learns from recorded episodes; pass --dataset FILE (record one with: "
                        f"rung collect --env {env_id} --policy expert --episodes 20 -o demos.npz)")
    traj = load(path, env)
    own = env_id.removeprefix("batched/")
    if traj.env_id and traj.env_id.removeprefix("batched/") != own and log is not None:
        log(f"note: {path} was recorded in {traj.env_id}; training for {env_id}, whose spaces it fits")
    return traj


def fit_obs_normalizer(env: VecEnv, observations: np.ndarray) -> None:
    """Set `env`'s observation statistics to the mean and variance of `observations` (T, obs_dim),
    exactly (no running prior), and freeze them. Nothing happens where the env does not normalise."""
    norm = env.normalizer
    if not norm.norm_obs:
        return
    x = np.asarray(observations, np.float64)
    norm.obs_rms.load_state_dict({"mean": x.mean(0), "var": x.var(0), "count": float(x.shape[0])})
    norm.frozen = True


def normalized_obs(env: VecEnv, observations: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """(T, obs_dim) float32 on `device`: `observations` as `env` would hand them to the policy
    (standardised and clipped with its frozen statistics, or unchanged where it does not normalise)."""
    norm = env.normalizer
    x = torch.as_tensor(observations, device=norm.obs_rms.mean.device) if norm.torch else np.asarray(observations)
    return torch.as_tensor(norm.obs(x, update=False), dtype=torch.float32, device=device)
