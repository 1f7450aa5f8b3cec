"""Gymnasium vector envs behind rung's VecEnv protocol: tensors in and out, episode statistics,
observation/reward normalisation, and a state that checkpoints can save and restore."""

from __future__ import annotations

import contextlib
import difflib
import io
import functools
import pickle
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from rung.batch import EnvStep
from rung.envs.wrappers import Normalizer
from rung.errors import UserError

# Solved marks for envs that register none, from the published baselines users compare against.
KNOWN_THRESHOLDS = {"Pendulum-v1": -200.0, "MountainCarContinuous-v0": 90.0}

# Which extra brings the simulator an env id needs.
EXTRA_FOR_ENV = {"mujoco": "rung[mujoco]", "box2d": "gymnasium[box2d]"}

# Ids that gymnasium-robotics registers; they exist only once that package has been imported,
# which is slow and pulls in mujoco, so it happens on first use, not when rung is imported.
ROBOTICS_PREFIXES = ("Fetch", "HandReach", "HandManipulate", "Adroit", "PointMaze", "AntMaze", "FrankaKitchen")

# A goal-conditioned env (gymnasium-robotics' GoalEnv) is flattened in this order, which is the
# order `goal_parts` slices and HER buffers concatenate in.
GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")


def env_threshold(env_id: str) -> float | None:
    env_id = env_id.removeprefix("batched/")
    if env_id in KNOWN_THRESHOLDS:
        return KNOWN_THRESHOLDS[env_id]
    try:
        return gym.spec(env_id).reward_threshold
    except gym.error.Error:
        return None


def _register_robotics(env_id: str) -> None:
    try:
        # Its import prints a notice about Adroit envs' reward versions to the console, which
        # would break rung's one-line errors and clutter every Fetch run.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import gymnasium_robotics
    except ImportError:
        if env_id.startswith(ROBOTICS_PREFIXES):
            raise UserError(f"{env_id} needs gymnasium-robotics; install it with: pip install 'rung[robotics]'") from None
        return
    gym.register_envs(gymnasium_robotics)


def check_env_id(env_id: str) -> None:
    """A one-line UserError for an id that names no env, gymnasium or `batched/`, with the closest match."""
    if env_id.startswith("batched/"):
        from rung.envs import batched

        batched.check_name(env_id)
        return
    try:
        gym.spec(env_id)
        return
    except gym.error.Error:
        pass
    _register_robotics(env_id)
    try:
        gym.spec(env_id)
    except gym.error.Error:
        # phys2d/ and tabular/ are gymnasium's JAX envs: rung steps numpy or its own torch envs.
        known = [k for k in gym.registry if not k.startswith(("phys2d/", "tabular/"))]
        close = difflib.get_close_matches(env_id, known, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}?" if close else "see gymnasium.registry for the ids"
        raise UserError(f"unknown environment {env_id!r}; {hint}") from None


class GymVecEnv:
    """`num_envs` copies of a gymnasium env stepped in this process.

    Auto-reset happens in the same step (gymnasium's SAME_STEP mode), so `obs` is always the
    observation the next action is taken from and `final_obs` keeps the one the episode ended on.
    """

    def __init__(self, env_id: str, num_envs: int, seed: int, *, normalize_obs: bool = False,
                 normalize_reward: bool = False, gamma: float = 0.99, render_mode: str | None = None,
                 env_kwargs: dict[str, Any] | None = None):
        check_env_id(env_id)
        self.env_id, self.num_envs, self.seed = env_id, num_envs, seed
        # functools.partial (not a lambda) keeps the vector env picklable for checkpoints.
        make = functools.partial(gym.make, env_id, render_mode=render_mode, **(env_kwargs or {}))
        try:
            self.envs = gym.vector.SyncVectorEnv([make] * num_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        except gym.error.DependencyNotInstalled as e:
            extra = next((v for k, v in EXTRA_FOR_ENV.items() if k in str(e).lower()), "gymnasium[all]")
            raise UserError(f"{env_id} needs a simulator that is not installed; install it with: pip install '{extra}'") from None
        except ImportError as e:
            # Envs whose entry point imports a package gymnasium does not wrap (phys2d's jax).
            raise UserError(f"{env_id} needs the package {e.name or str(e)!r}, which is not installed; "
                            f"install it (pip install {(e.name or '').split('.')[0] or '...'}) or choose another env") from None
        obs_space, act_space = self.envs.single_observation_space, self.envs.single_action_space
        # Where each part of a goal env's flat observation lies; None for a plain Box env.
        self.goal_parts: dict[str, slice] | None = None
        if (isinstance(obs_space, gym.spaces.Dict) and set(obs_space.spaces) == set(GOAL_KEYS)
                and all(len(obs_space[k].shape) == 1 for k in GOAL_KEYS)):
            sizes = [obs_space[k].shape[0] for k in GOAL_KEYS]
            ends = np.cumsum(sizes).tolist()
            self.goal_parts = {k: slice(end - n, end) for k, n, end in zip(GOAL_KEYS, sizes, ends)}
            self.obs_shape = (ends[-1],)
        elif isinstance(obs_space, gym.spaces.Box):
            self.obs_shape = tuple(obs_space.shape)
        else:
            raise UserError(f"{env_id} has {type(obs_space).__name__} observations; rung's MLP policies take Box observations")
        if isinstance(act_space, gym.spaces.Discrete):
            self.discrete, self.action_dim = True, int(act_space.n)
        elif isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
            self.discrete, self.action_dim = False, int(act_space.shape[0])
            self.action_low, self.action_high = act_space.low, act_space.high
        else:
            raise UserError(f"{env_id} has a {act_space} action space; rung supports Discrete and 1-D Box actions")
        self.normalizer = Normalizer(self.obs_shape, num_envs, obs=normalize_obs, reward=normalize_reward, gamma=gamma)
        self.ep_return = np.zeros(num_envs, np.float64)
        self.ep_length = np.zeros(num_envs, np.int64)
        self.last_obs: torch.Tensor | None = None  # what reset/step last returned: where a resumed run continues
        self._last_raw: np.ndarray | None = None  # the same before normalisation

    def reset(self, seed: int | None = None) -> torch.Tensor:
        base = self.seed if seed is None else seed
        obs, _ = self.envs.reset(seed=[base + i for i in range(self.num_envs)])
        self.ep_return[:] = 0
        self.ep_length[:] = 0
        self._last_raw = self._flat(obs)
        self.last_obs = self._tensor(self.normalizer.obs(self._last_raw))
        return self.last_obs

    def step(self, actions: torch.Tensor) -> EnvStep:
        act = actions.cpu().numpy()
        if not self.discrete:
            # The policy's Gaussian is unbounded; the env gets the clipped action while the
            # learner keeps the sampled one, so its log-prob stays exact.
            act = np.clip(act, self.action_low, self.action_high)
        obs, reward, terminated, truncated, info = self.envs.step(act)
        obs = self._last_raw = self._flat(obs)
        reward = np.asarray(reward, np.float64)
        done = terminated | truncated
        self.ep_return += reward
        self.ep_length += 1
        episode_return, episode_length = self.ep_return.copy(), self.ep_length.copy()
        obs_n = self.normalizer.obs(obs)
        final_n = obs_n
        if done.any():
            ended = np.flatnonzero(done)
            self.ep_return[ended] = 0
            self.ep_length[ended] = 0
            final_obs = obs.copy()
            final_obs[ended] = np.stack([self._flat(info["final_obs"][i]) for i in ended])
            final_n = self.normalizer.obs(final_obs, update=False)
        reward_n = self.normalizer.reward(reward, done)
        self.last_obs = self._tensor(obs_n)
        return EnvStep(
            obs=self.last_obs,
            reward=torch.as_tensor(reward_n, dtype=torch.float32),
            terminated=torch.as_tensor(terminated),
            truncated=torch.as_tensor(truncated & ~terminated),
            final_obs=self._tensor(final_n),
            episode_return=torch.from_numpy(episode_return),
            episode_length=torch.from_numpy(episode_length),
            success=self._success(info, done),
        )

    def _flat(self, obs: Any) -> np.ndarray:
        """A goal env's dict observation (batched or one env's) as one vector in GOAL_KEYS order."""
        if self.goal_parts is None:
            return obs
        return np.concatenate([np.asarray(obs[k], np.float64) for k in GOAL_KEYS], axis=-1)

    @staticmethod
    def _success(info: dict[str, Any], done: np.ndarray) -> torch.Tensor | None:
        # With SAME_STEP autoreset the top-level info of an env that just ended is its reset info,
        # which carries no is_success; the final step's verdict is in final_info.
        final = info.get("final_info", {})
        if "is_success" not in info and "is_success" not in final:
            return None
        success = np.zeros(done.shape, bool)
        if "is_success" in info:
            has = info["_is_success"] & ~done
            success[has] = np.asarray(info["is_success"])[has] > 0
        if "is_success" in final:
            has = final["_is_success"] & done
            success[has] = np.asarray(final["is_success"])[has] > 0
        return torch.as_tensor(success)

    def compute_reward(self, achieved: torch.Tensor, desired: torch.Tensor) -> torch.Tensor:
        """The env's own reward for reaching `achieved` when `desired` was asked, (B, goal) -> (B,):
        what HER calls to relabel stored transitions with other goals."""
        if self.goal_parts is None:
            raise UserError(f"{self.env_id} is not goal-conditioned; HER needs an env with observation, "
                            "achieved_goal and desired_goal, such as FetchReach-v4")
        reward = self.envs.envs[0].unwrapped.compute_reward(achieved.cpu().numpy(), desired.cpu().numpy(), None)
        return torch.as_tensor(np.asarray(reward, np.float32))

    @staticmethod
    def _tensor(x: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x, np.float32))

    def render(self) -> np.ndarray:
        return self.envs.envs[0].render()

    def state_dict(self) -> dict[str, Any]:
        """Normaliser statistics always; the simulators themselves where they pickle (classic
        control does), which makes a resumed run continue mid-episode exactly."""
        # EzPickle envs (MuJoCo, Box2D, gymnasium-robotics) pickle their constructor arguments, not
        # their state: unpickled they are fresh and un-reset (a Fetch env then fails on its first
        # step), so they are not saved and a resumed run starts new episodes instead.
        if any(isinstance(e.unwrapped, gym.utils.EzPickle) for e in self.envs.envs):
            envs = None
        else:
            try:
                envs = pickle.dumps(self.envs)
            except Exception:  # a simulator holding handles that cannot be pickled
                envs = None
        return {"normalizer": self.normalizer.state_dict(), "envs": envs, "last_obs": self.last_obs,
                "ep_return": self.ep_return.copy(), "ep_length": self.ep_length.copy()}

    def load_state_dict(self, state: dict[str, Any], restore_envs: bool = True) -> bool:
        """Load what state_dict saved; True when the simulators were restored, so that the running
        episodes go on, False when the envs start new ones from their reset."""
        self.normalizer.load_state_dict(state["normalizer"])
        if self._last_raw is not None:
            # The envs' current observation (a fresh reset's, where the simulators do not pickle)
            # was normalised with statistics of that observation alone; use the loaded ones.
            self.last_obs = self._tensor(self.normalizer.obs(self._last_raw, update=False))
        if restore_envs and state.get("envs") is not None:
            envs = pickle.loads(state["envs"])
            if envs.num_envs == self.num_envs:
                self.envs.close()
                self.envs = envs
                self.ep_return = state["ep_return"].copy()
                self.ep_length = state["ep_length"].copy()
                self.last_obs = state["last_obs"]
                return True
        return False

    def close(self) -> None:
        self.envs.close()


def make_env(env_id: str, num_envs: int, seed: int, *, device: torch.device | str = "cpu",
             randomize: dict[str, tuple[float, float]] | None = None, **kwargs: Any):
    """`batched/NAME` gives a BatchedEnv on `device` (tensor dynamics, many copies); any other id
    a GymVecEnv of gymnasium envs on the host. Both follow the VecEnv protocol."""
    if env_id.startswith("batched/"):
        from rung.envs import batched

        if kwargs.pop("render_mode", None) is not None:
            raise UserError(f"{env_id} does not render; render the gymnasium env {env_id.removeprefix('batched/')} instead")
        kwargs.pop("env_kwargs", None)
        return batched.make(env_id, num_envs, device=device, seed=seed, randomize=randomize, **kwargs)
    kwargs.pop("compile", None)  # gymnasium envs run their own Python; nothing to compile
    if randomize:
        raise UserError(f"--randomize needs a batched env such as batched/{env_id}; {env_id} is a gymnasium env")
    return GymVecEnv(env_id, num_envs, seed, **kwargs)
