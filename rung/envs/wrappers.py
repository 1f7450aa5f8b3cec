"""Running statistics for observation and reward normalisation.

The statistics are part of the policy: they are saved in every checkpoint and restored with it,
and evaluation uses them frozen."""

from __future__ import annotations

from typing import Any

import numpy as np


class RunningMeanStd:
    """Mean and variance over every sample seen, merged batch by batch (Chan et al.'s parallel
    update), so that merging two shards' statistics equals computing them on the union."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        # A tiny prior count keeps the first division finite, as the reference implementations do.
        self.count = epsilon

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        self.merge(x.mean(axis=0), x.var(axis=0), x.shape[0])

    def merge(self, batch_mean: np.ndarray, batch_var: np.ndarray, batch_count: float) -> None:
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count + delta**2 * self.count * batch_count / total
        self.var = m2 / total
        self.count = total

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        self.count = float(state["count"])


class Normalizer:
    """Observation and reward normalisation for a vector of envs (the scheme of Engstrom et al.
    2020: observations standardised and clipped, rewards divided by the std of the discounted
    return). `frozen` stops updates, for evaluation."""

    def __init__(self, obs_shape: tuple[int, ...], num_envs: int, *, obs: bool, reward: bool,
                 gamma: float, clip_obs: float = 10.0, clip_reward: float = 10.0, eps: float = 1e-8):
        self.norm_obs, self.norm_reward = obs, reward
        self.gamma, self.clip_obs, self.clip_reward, self.eps = gamma, clip_obs, clip_reward, eps
        self.obs_rms = RunningMeanStd(obs_shape)
        self.ret_rms = RunningMeanStd(())
        self.returns = np.zeros(num_envs, np.float64)
        self.frozen = False

    def obs(self, obs: np.ndarray, update: bool = True) -> np.ndarray:
        if not self.norm_obs:
            return obs
        if update and not self.frozen:
            self.obs_rms.update(obs)
        out = (obs - self.obs_rms.mean) / np.sqrt(self.obs_rms.var + self.eps)
        return np.clip(out, -self.clip_obs, self.clip_obs)

    def reward(self, reward: np.ndarray, done: np.ndarray) -> np.ndarray:
        if not self.norm_reward:
            return reward
        self.returns = self.returns * self.gamma + reward
        if not self.frozen:
            self.ret_rms.update(self.returns)
        out = np.clip(reward / np.sqrt(self.ret_rms.var + self.eps), -self.clip_reward, self.clip_reward)
        self.returns[done] = 0.0
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"obs_rms": self.obs_rms.state_dict(), "ret_rms": self.ret_rms.state_dict(), "returns": self.returns.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.obs_rms.load_state_dict(state["obs_rms"])
        self.ret_rms.load_state_dict(state["ret_rms"])
        if len(state["returns"]) == len(self.returns):
            self.returns = np.array(state["returns"], np.float64)
