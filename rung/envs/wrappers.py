"""Running statistics for observation and reward normalisation.

The statistics are part of the policy: they are saved in every checkpoint and restored with it,
and evaluation uses them frozen. One implementation serves numpy (gymnasium envs, on the host)
and torch (batched envs, on their device): the update is plain arithmetic on either."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def _as_backend(x: Any, like: Any) -> Any:
    if isinstance(like, torch.Tensor):
        return torch.as_tensor(x, dtype=torch.float64, device=like.device).clone()
    if isinstance(x, torch.Tensor):
        x = x.cpu().numpy()
    return np.array(x, np.float64)


class RunningMeanStd:
    """Mean and variance over every sample seen, merged batch by batch (Chan et al.'s parallel
    update), so that merging two shards' statistics equals computing them on the union.
    `device=None` keeps numpy arrays; a device keeps float64 tensors there."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4, device: torch.device | str | None = None):
        if device is None:
            self.mean, self.var = np.zeros(shape, np.float64), np.ones(shape, np.float64)
        else:
            self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
            self.var = torch.ones(shape, dtype=torch.float64, device=device)
        # A tiny prior count keeps the first division finite, as the reference implementations do.
        self.count = epsilon

    def update(self, x: Any) -> None:
        if isinstance(x, torch.Tensor):
            x = x.to(torch.float64)
            self.merge(x.mean(0), x.var(0, correction=0), x.shape[0])
        else:
            x = np.asarray(x, np.float64)
            self.merge(x.mean(axis=0), x.var(axis=0), x.shape[0])

    def merge(self, batch_mean: Any, batch_var: Any, batch_count: float) -> None:
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta * delta * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        copy = (lambda x: x.clone()) if isinstance(self.mean, torch.Tensor) else (lambda x: np.array(x, np.float64))
        return {"mean": copy(self.mean), "var": copy(self.var), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = _as_backend(state["mean"], self.mean)
        self.var = _as_backend(state["var"], self.var)
        self.count = float(state["count"])


class Normalizer:
    """Observation and reward normalisation for a vector of envs (the scheme of Engstrom et al.
    2020: observations standardised and clipped, rewards divided by the std of the discounted
    return). `frozen` stops updates, for evaluation. Arrays in, arrays out, numpy or torch as
    constructed (`device`)."""

    def __init__(self, obs_shape: tuple[int, ...], num_envs: int, *, obs: bool, reward: bool,
                 gamma: float, clip_obs: float = 10.0, clip_reward: float = 10.0, eps: float = 1e-8,
                 device: torch.device | str | None = None):
        self.norm_obs, self.norm_reward = obs, reward
        self.gamma, self.clip_obs, self.clip_reward, self.eps = gamma, clip_obs, clip_reward, eps
        self.obs_rms = RunningMeanStd(obs_shape, device=device)
        self.ret_rms = RunningMeanStd((), device=device)
        self.torch = device is not None
        self.returns = (torch.zeros(num_envs, dtype=torch.float64, device=device) if self.torch
                        else np.zeros(num_envs, np.float64))
        self.frozen = False
        self._std_of: Any = None  # the variance self._std was taken from

    def _clip(self, x: Any, bound: float) -> Any:
        return x.clamp(-bound, bound) if self.torch else np.clip(x, -bound, bound)

    def _sqrt(self, x: Any) -> Any:
        return x.sqrt() if self.torch else np.sqrt(x)

    def obs(self, obs: Any, update: bool = True) -> Any:
        if not self.norm_obs:
            return obs
        if update and not self.frozen:
            self.obs_rms.update(obs)
        rms = self.obs_rms
        # Kept until the variance changes (every update, or a load, puts a new array in its place):
        # a frozen normaliser, as in evaluation, takes no square root a step.
        if self._std_of is not rms.var:
            self._std, self._std_of = self._sqrt(rms.var + self.eps), rms.var
        return self._clip((obs - rms.mean) / self._std, self.clip_obs)

    def reward(self, reward: Any, done: Any) -> Any:
        if not self.norm_reward:
            return reward
        self.returns = self.returns * self.gamma + reward
        if not self.frozen:
            self.ret_rms.update(self.returns)
        out = self._clip(reward / self._sqrt(self.ret_rms.var + self.eps), self.clip_reward)
        if self.torch:
            self.returns = torch.where(done, 0.0, self.returns)
        else:
            self.returns[done] = 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        returns = self.returns.clone() if self.torch else self.returns.copy()
        return {"obs_rms": self.obs_rms.state_dict(), "ret_rms": self.ret_rms.state_dict(), "returns": returns}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])
        if len(state["returns"]) == len(self.returns):
            self.returns = _as_backend(state["returns"], self.returns)
