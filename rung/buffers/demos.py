"""Trajectory datasets on disk: demonstrations for imitation, data for offline RL.

`Trajectories` holds whole episodes as flat numpy arrays, episode after episode, delimited by
`episode_ends`. It is read and written in three layouts:

- rung's own: one `.npz` (`save`/`load`): the arrays plus a JSON metadata entry, no pickle, so a
  file from elsewhere cannot run code when loaded.
- D4RL's HDF5 layout (`.hdf5`/`.h5`, `save_d4rl`/`read_d4rl`): flat `observations`, `actions`,
  `rewards`, `terminals`, `timeouts` and, where present, `next_observations`, which is what most
  offline-RL code reads.
- Minari's HDF5 layout (`export_minari`/`read_minari`): a dataset folder whose `data/` holds
  `main_data.hdf5`, one `episode_{i}` group per episode with `observations` (T+1 rows: the last
  one is where the episode ended), `actions`, `rewards`, `terminations`, `truncations`, and the
  dataset metadata, which Minari 0.5 reads from `data/metadata.json` and Minari 0.4 from the HDF5
  file's attributes; both are written.

The HDF5 layouts need h5py (`pip install 'rung[offline]'`); the `.npz` format needs nothing.
`load` reads any of the three and checks the data, and against an env where one is given.
`collect` records them from a policy: `rung collect` is its command line.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from rung.errors import UserError, missing_dependency

FORMAT = "rung-trajectories"
FORMAT_VERSION = 1

# observation | achieved_goal | desired_goal, the order make_env flattens a goal env's dict in.
GOAL_KEYS = ("observation", "achieved_goal", "desired_goal")

# Written into Minari metadata. Minari 0.5.x accepts datasets marked 0.4.x and 0.5.x (an exact
# list); Minari 0.4 parses the mark as a version specifier, fails, says so and reads on. "0.4.3"
# is therefore the mark the most Minari versions read without refusing.
MINARI_DATASET_VERSION = "0.4.3"

# Box bounds are compared with a little slack: data written by other tools may hold bounds that
# went through float64 and back.
BOUNDS_TOLERANCE = 1e-6

PolicyFn = Callable[[torch.Tensor], torch.Tensor]  # obs (N, obs_dim) -> actions (N,) int64 or (N, act_dim)
Env = Any  # a VecEnv with obs_shape, discrete, action_dim (and action_low/high for Box actions)


@dataclass
class Trajectories:
    """Whole episodes, one after another. T steps over E episodes in all."""

    observations: np.ndarray  # (T, obs_dim) float32
    """The observation each action was taken from (raw, never normalised)."""
    actions: np.ndarray  # (T,) int64 or (T, act_dim) float32
    """Discrete actions as integers; Box actions as the env executed them, inside its bounds."""
    rewards: np.ndarray  # (T,) float32
    """The env's own rewards."""
    terminated: np.ndarray  # (T,) bool
    """The MDP ended at this step: nothing to bootstrap from."""
    truncated: np.ndarray  # (T,) bool
    """The episode was cut here (a time limit, or the recording stopped): bootstrap from next_observations."""
    next_observations: np.ndarray  # (T, obs_dim) float32
    """The observation after each step; where an episode ended, the one it ended on (not the reset)."""
    episode_ends: np.ndarray  # (E,) int64
    """Index one past each episode's last step, increasing; the last equals T."""
    env_id: str = ""
    """Gymnasium id of the env that produced the data ('' when the file does not say)."""
    source: str = ""
    """What produced it: 'expert', a run folder, or the file it was read from."""
    seed: int | None = None
    """Seed of the first episode, where the data was recorded with one."""
    success: np.ndarray | None = None  # (T,) bool
    """The env's is_success at each step, for envs that report one (goal envs), else None."""
    goal_parts: dict[str, tuple[int, int]] | None = None
    """For a goal env, where observation / achieved_goal / desired_goal lie in a flat observation."""

    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.shape[0])

    @property
    def episode_starts(self) -> np.ndarray:  # (E,) int64
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    @property
    def discrete(self) -> bool:
        return self.actions.ndim == 1

    def lengths(self) -> np.ndarray:  # (E,) int64
        return np.diff(self.episode_ends, prepend=0)

    def returns(self) -> np.ndarray:  # (E,) float64
        """Undiscounted return of each episode."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    @property
    def mean_return(self) -> float:
        return float(self.returns().mean())

    @property
    def success_rate(self) -> float | None:
        """Share of episodes whose last step reports success; None where the env reports none."""
        if self.success is None:
            return None
        return float(self.success[self.episode_ends - 1].mean())

    def metadata(self) -> dict[str, Any]:
        """What the files store besides the arrays; the counts are there for people reading the file."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "env_id": self.env_id, "source": self.source,
                "seed": self.seed, "goal_parts": self.goal_parts, "num_episodes": self.num_episodes,
                "num_steps": len(self), "mean_return": self.mean_return}

    def _slice(self, start: int, end: int) -> Trajectories:
        """Steps start..end, which must cover whole episodes (views, no copy)."""
        arrays = {k: getattr(self, k)[start:end] for k in _STEP_ARRAYS}
        ends = self.episode_ends[(self.episode_ends > start) & (self.episode_ends <= end)] - start
        success = None if self.success is None else self.success[start:end]
        return replace(self, **arrays, episode_ends=ends, success=success)

    def episodes(self) -> Iterator[Trajectories]:
        """Each episode on its own, in order."""
        for start, end in zip(self.episode_starts.tolist(), self.episode_ends.tolist()):
            yield self._slice(start, end)

    def select(self, indices: list[int] | np.ndarray) -> Trajectories:
        """The episodes at `indices`, in that order, as one dataset."""
        indices = np.asarray(indices, np.int64)
        if indices.size == 0:
            raise UserError("cannot select zero episodes; a dataset holds at least one")
        starts, ends = self.episode_starts, self.episode_ends
        parts = [self._slice(int(starts[i]), int(ends[i])) for i in indices]
        return concatenate(parts)

    def split(self, fraction: float, seed: int = 0) -> tuple[Trajectories, Trajectories]:
        """(train, validation) by whole episodes, `fraction` of them for training, drawn at random
        with `seed`; each part keeps the original episode order. Splitting by episode rather than
        by step keeps the validation steps from being neighbours of training steps."""
        if not 0.0 < fraction < 1.0:
            raise UserError(f"split fraction must lie strictly between 0 and 1, got {fraction}")
        if self.num_episodes < 2:
            raise UserError(f"cannot split {self.num_episodes} episode into train and validation; record at least 2")
        n_train = min(max(round(fraction * self.num_episodes), 1), self.num_episodes - 1)
        order = np.random.default_rng(seed).permutation(self.num_episodes)
        return self.select(np.sort(order[:n_train])), self.select(np.sort(order[n_train:]))


_STEP_ARRAYS = ("observations", "actions", "rewards", "terminated", "truncated", "next_observations")


def concatenate(parts: list[Trajectories]) -> Trajectories:
    """Datasets one after another; metadata from the first."""
    first = parts[0]
    arrays = {k: np.concatenate([getattr(p, k) for p in parts]) for k in _STEP_ARRAYS}
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    ends = np.concatenate([p.episode_ends + off for p, off in zip(parts, offsets)]).astype(np.int64)
    success = None if any(p.success is None for p in parts) else np.concatenate([p.success for p in parts])
    return replace(first, **arrays, episode_ends=ends, success=success)


# -- checks -------------------------------------------------------------------------------------

def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))[0])


def check(traj: Trajectories, name: str = "trajectories", env: Env | None = None) -> Trajectories:
    """Raise a one-line UserError naming `name` (the file) and the problem where the data is
    malformed, holds NaN or inf, or (given `env`) does not fit the env's spaces. Returns `traj`."""
    obs, nxt, act = traj.observations, traj.next_observations, traj.actions
    if obs.ndim != 2:
        raise UserError(f"{name}: observations have shape {obs.shape}, expected (steps, obs_dim); rung reads flat vector observations")
    t = len(traj)
    if t == 0:
        raise UserError(f"{name}: holds no steps; record at least one episode")
    if nxt.shape != obs.shape:
        raise UserError(f"{name}: next_observations have shape {nxt.shape} but observations {obs.shape}; they must match")
    for key in ("rewards", "terminated", "truncated") + (("success",) if traj.success is not None else ()):
        shape = getattr(traj, key).shape
        if shape != (t,):
            raise UserError(f"{name}: {key} have shape {shape}, expected ({t},) like observations; the arrays must have one row per step")
    if act.shape[0] != t or act.ndim not in (1, 2):
        raise UserError(f"{name}: actions have shape {act.shape}, expected ({t},) integers or ({t}, act_dim) floats")
    if act.ndim == 1 and not np.issubdtype(act.dtype, np.integer):
        raise UserError(f"{name}: actions are ({t},) {act.dtype}; store discrete actions as integers, Box actions as ({t}, act_dim)")
    for key, arr in (("observations", obs), ("next_observations", nxt), ("rewards", traj.rewards), ("actions", act)):
        if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
            raise UserError(f"{name}: {key} hold NaN or inf (first at step {_first_bad(~np.isfinite(arr))}); "
                            "drop those episodes or record the data again")
    ends = traj.episode_ends
    if ends.ndim != 1 or ends.size == 0 or ends[-1] != t or (np.diff(ends, prepend=0) <= 0).any():
        raise UserError(f"{name}: episode_ends must increase and end at the step count {t}, got {ends[:5].tolist()}...; "
                        "it marks one past each episode's last step")
    done = traj.terminated | traj.truncated
    at_end = np.zeros(t, bool)
    at_end[ends - 1] = True
    if (done != at_end).any():
        step = _first_bad(done != at_end)
        what = "ends an episode that episode_ends continues" if done[step] else "ends an episode but is neither terminated nor truncated"
        raise UserError(f"{name}: step {step} {what}; mark each episode's last step, and only it, terminated or truncated")
    if traj.goal_parts is not None and max(end for _, end in traj.goal_parts.values()) > obs.shape[1]:
        raise UserError(f"{name}: goal_parts {traj.goal_parts} reach past the {obs.shape[1]} observation dims")
    if env is not None:
        check_env(traj, name, env)
    return traj


def check_env(traj: Trajectories, name: str, env: Env) -> None:
    """The data fits `env`: observation size, action kind, and actions inside its space."""
    env_id = getattr(env, "env_id", "the env")
    obs_dim, act = traj.observations.shape[1], traj.actions
    if tuple(env.obs_shape) != (obs_dim,):
        raise UserError(f"{name}: observations have {obs_dim} dims but {env_id} gives {tuple(env.obs_shape)}; "
                        f"use data recorded in {env_id} (this file says {traj.env_id or 'nothing'})")
    if env.discrete != traj.discrete:
        if env.discrete and act.ndim == 2 and act.shape[1] == 1 and np.array_equal(act, np.round(act)):
            # Other tools often write discrete actions as a (T, 1) column: name the fix, not the data.
            raise UserError(f"{name}: actions are a (T, 1) column of whole numbers; {env_id}'s are discrete, "
                            "stored as one integer per step, shape (T,): save actions[:, 0] as integers")
        kinds = ("discrete", "continuous")
        raise UserError(f"{name}: actions are {kinds[not traj.discrete]} but {env_id}'s are {kinds[not env.discrete]}; "
                        f"use data recorded in {env_id}")
    if env.discrete:
        bad = (act < 0) | (act >= env.action_dim)
        if bad.any():
            raise UserError(f"{name}: action {int(act[_first_bad(bad)])} at step {_first_bad(bad)} is outside {env_id}'s "
                            f"Discrete({env.action_dim}); use data recorded in {env_id}")
        return
    if act.shape[1] != env.action_dim:
        raise UserError(f"{name}: actions have {act.shape[1]} dims but {env_id} takes {env.action_dim}; use data recorded in {env_id}")
    low = np.asarray(env.action_low, np.float64) - BOUNDS_TOLERANCE
    high = np.asarray(env.action_high, np.float64) + BOUNDS_TOLERANCE
    bad = (act < low) | (act > high)
    if bad.any():
        step = _first_bad(bad)
        raise UserError(f"{name}: action {np.round(act[step], 4).tolist()} at step {step} is outside {env_id}'s bounds "
                        f"[{np.round(env.action_low, 4).tolist()}, {np.round(env.action_high, 4).tolist()}]; clip the actions to the bounds")


def _coerce(arrays: dict[str, np.ndarray | None], name: str) -> dict[str, np.ndarray | None]:
    """The dtypes Trajectories documents, whatever the file stored."""
    act = np.asarray(arrays["actions"])
    if np.issubdtype(act.dtype, np.integer) and act.ndim == 1:
        act = act.astype(np.int64)
    elif np.issubdtype(act.dtype, np.floating) or np.issubdtype(act.dtype, np.integer):
        act = act.astype(np.float32)
    else:
        raise UserError(f"{name}: actions are {act.dtype}; expected integers (discrete) or floats (Box)")
    out: dict[str, np.ndarray | None] = {"actions": act}
    for key in ("observations", "next_observations", "rewards"):
        try:
            out[key] = np.asarray(arrays[key]).astype(np.float32)
        except (TypeError, ValueError):
            raise UserError(f"{name}: {key} are {np.asarray(arrays[key]).dtype}, not numbers") from None
    for key in ("terminated", "truncated"):
        out[key] = np.asarray(arrays[key]).astype(bool)
    out["episode_ends"] = np.asarray(arrays["episode_ends"]).astype(np.int64)
    out["success"] = None if arrays.get("success") is None else np.asarray(arrays["success"]).astype(bool)
    return out


# -- files --------------------------------------------------------------------------------------

def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """`write` a temporary file beside `path`, then rename it over `path`, so that a crash never
    leaves a half-written file under the real name (os.replace is atomic within one filesystem)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _h5py():
    try:
        import h5py
    except ImportError:
        raise missing_dependency("h5py", "offline") from None
    return h5py


def file_kind(path: str | Path) -> str:
    """'npz' (rung's format) or 'd4rl' (HDF5) from the file name, as `save` will write it."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".hdf5", ".h5"):
        return "d4rl"
    raise UserError(f"{path}: cannot tell the format from {suffix or 'no extension'!r}; "
                    "name it .npz (rung's format) or .hdf5 (D4RL layout)")


def save(traj: Trajectories, path: str | Path) -> Path:
    """Write `traj` as rung's .npz, or in D4RL's layout for .hdf5/.h5 (needs h5py)."""
    path = Path(path)
    if file_kind(path) == "d4rl":
        return save_d4rl(traj, path)
    arrays = {k: getattr(traj, k) for k in _STEP_ARRAYS}
    arrays["episode_ends"] = traj.episode_ends
    if traj.success is not None:
        arrays["success"] = traj.success
    # The metadata is a JSON string, not a pickled dict, so loading needs no allow_pickle.
    arrays["metadata"] = np.array(json.dumps(traj.metadata()))

    def write(tmp: Path) -> None:
        # A file object, because np.savez given a name that does not end in .npz appends one.
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    return _atomic_write(path, write)


def load(path: str | Path, env: Env | str | None = None) -> Trajectories:
    """Read rung's .npz, a D4RL-layout .hdf5, or a Minari dataset (its folder, its data/ folder,
    or its main_data.hdf5), then check it, and against `env` (a VecEnv or a gymnasium id) if given."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file; check the path")
    if path.is_dir() or path.name == "main_data.hdf5":
        traj = read_minari(path)
    elif file_kind(path) == "d4rl":
        h5py = _h5py()
        try:
            with h5py.File(path, "r") as f:
                minari = any(k.startswith("episode_") for k in f.keys())
        except OSError as e:
            raise UserError(f"{path}: not a readable HDF5 file ({e})") from None
        traj = read_minari(path) if minari else read_d4rl(path)
    else:
        traj = _load_npz(path)
    if isinstance(env, str):
        from rung.envs.make import make_env

        made = make_env(env.removeprefix("batched/"), 1, 0)
        try:
            check_env(traj, str(path), made)
        finally:
            made.close()
    elif env is not None:
        check_env(traj, str(path), env)
    return traj


def _load_npz(path: Path) -> Trajectories:
    name = str(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            files = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:  # a cut-off or damaged file
        raise UserError(f"{name}: not a readable .npz ({str(e).splitlines()[0][:80]}); write it with rung.buffers.demos.save") from None
    missing = [k for k in (*_STEP_ARRAYS, "episode_ends", "metadata") if k not in files]
    if missing:
        raise UserError(f"{name}: missing array {missing[0]!r}; not a rung trajectory file (write one with 'rung collect')")
    try:
        meta = json.loads(str(files.pop("metadata")))
        if not isinstance(meta, dict):
            raise ValueError
    except ValueError:
        raise UserError(f"{name}: its metadata is not JSON; not a rung trajectory file (write one with 'rung collect')") from None
    if meta.get("format") != FORMAT or meta.get("version", 0) > FORMAT_VERSION:
        raise UserError(f"{name}: is {meta.get('format')} version {meta.get('version')}; this rung reads {FORMAT} "
                        f"up to version {FORMAT_VERSION}, upgrade rung")
    goal_parts = meta.get("goal_parts")
    traj = Trajectories(**_coerce(files, name), env_id=meta.get("env_id", ""), source=meta.get("source", ""),
                        seed=meta.get("seed"), goal_parts={k: tuple(v) for k, v in goal_parts.items()} if goal_parts else None)
    return check(traj, name)


def save_d4rl(traj: Trajectories, path: str | Path) -> Path:
    """Write D4RL's flat HDF5 layout: observations, actions, rewards, terminals, timeouts,
    next_observations, and infos/is_success for goal envs. rung's metadata goes into the file's
    attributes, where D4RL readers do not look and rung's reader does."""
    h5py = _h5py()
    path = Path(path)

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            for key, value in (("observations", traj.observations), ("actions", traj.actions), ("rewards", traj.rewards),
                               ("terminals", traj.terminated), ("timeouts", traj.truncated),
                               ("next_observations", traj.next_observations)):
                f.create_dataset(key, data=value, compression="gzip")
            if traj.success is not None:
                f.create_dataset("infos/is_success", data=traj.success)
            f.attrs["env_id"] = traj.env_id
            f.attrs["rung_metadata"] = json.dumps(traj.metadata())

    return _atomic_write(path, write)


def read_d4rl(path: str | Path) -> Trajectories:
    """Read D4RL's flat HDF5 layout. Episodes end where `terminals` or `timeouts` is set; a file
    that stops mid-episode has its last step marked truncated. Without `next_observations`, each
    step's next observation is the following row; an episode cut by a time limit then lacks the
    observation it ended on, which bootstrapping needs, so its last step is dropped and the one
    before becomes its truncated end (what D4RL's own qlearning_dataset does too). A terminal
    step keeps its own observation as a placeholder: it never bootstraps."""
    h5py = _h5py()
    path = Path(path)
    name = str(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{name}: not a readable HDF5 file ({e})") from None
    with f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
        if missing:
            raise UserError(f"{name}: no {missing[0]!r} dataset; not in D4RL's layout (observations, actions, rewards, terminals, timeouts)")
        arrays = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals")}
        arrays["timeouts"] = f["timeouts"][()] if "timeouts" in f else np.zeros_like(arrays["terminals"])
        next_obs = f["next_observations"][()] if "next_observations" in f else None
        success = f["infos/is_success"][()] if "infos/is_success" in f else None
        meta = json.loads(f.attrs["rung_metadata"]) if "rung_metadata" in f.attrs else {}
        env_id = str(f.attrs.get("env_id", meta.get("env_id", "")))
    terminated = np.asarray(arrays["terminals"]).astype(bool).reshape(-1)
    truncated = np.asarray(arrays["timeouts"]).astype(bool).reshape(-1) & ~terminated
    obs = np.asarray(arrays["observations"])
    t = terminated.shape[0]
    if obs.shape[:1] != (t,) or truncated.shape != (t,) or np.asarray(arrays["rewards"]).shape[:1] != (t,):
        raise UserError(f"{name}: observations, rewards, terminals and timeouts have {obs.shape[0]}, "
                        f"{len(arrays['rewards'])}, {t} and {len(truncated)} rows; they must have one per step")
    if t and not (terminated[-1] or truncated[-1]):
        truncated[-1] = True  # the recording stopped here
    keep = np.ones(t, bool)
    if next_obs is None:
        next_obs = np.empty_like(obs)
        next_obs[:-1] = obs[1:]
        last = np.flatnonzero(terminated | truncated)
        next_obs[last] = obs[last]
        cut = last[truncated[last]]
        keep[cut] = False
        before = cut - 1
        before = before[(before >= 0) & ~(terminated | truncated)[np.maximum(before, 0)]]
        truncated[before] = True
    done = (terminated | truncated)[keep]
    arrays = {"observations": obs[keep], "actions": np.asarray(arrays["actions"])[keep],
              "rewards": np.asarray(arrays["rewards"]).reshape(-1)[keep], "terminated": terminated[keep],
              "truncated": truncated[keep], "next_observations": next_obs[keep],
              "episode_ends": np.flatnonzero(done) + 1, "success": None if success is None else success[keep]}
    goal_parts = meta.get("goal_parts")
    traj = Trajectories(**_coerce(arrays, name), env_id=env_id, source=meta.get("source", name), seed=meta.get("seed"),
                        goal_parts={k: tuple(v) for k, v in goal_parts.items()} if goal_parts else None)
    return check(traj, name)


# -- Minari's layout ----------------------------------------------------------------------------

def _space_json(space: Any) -> dict[str, Any]:
    """A gymnasium space as Minari serialises it (type, dtype, shape, bounds)."""
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return {"type": "Box", "dtype": str(space.dtype), "shape": list(space.shape),
                "low": space.low.tolist(), "high": space.high.tolist()}
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "dtype": "int64", "start": int(space.start), "n": int(space.n)}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "subspaces": {k: _space_json(v) for k, v in space.spaces.items()}}
    raise UserError(f"cannot describe a {type(space).__name__} space in Minari's metadata; rung exports Box, Discrete and Dict")


def _minari_spaces(traj: Trajectories) -> tuple[dict[str, Any], dict[str, Any], str | None, dict[str, tuple[int, int]] | None]:
    """(observation space, action space, env spec JSON, goal parts) for the metadata: the env's
    own where `traj.env_id` can be made (after checking that the data fits it), else spaces
    inferred from the data with unbounded boxes and no env spec."""
    import gymnasium as gym

    if traj.env_id:
        from rung.envs.make import make_env

        try:
            env = make_env(traj.env_id, 1, 0)
        except UserError:
            env = None
        if env is not None:
            try:
                check_env(traj, f"dataset for {traj.env_id}", env)
                try:
                    spec = gym.spec(traj.env_id).to_json()
                except TypeError:  # kwargs that JSON cannot hold; Minari then cannot remake the env
                    spec = None
                parts = None if env.goal_parts is None else {k: (p.start, p.stop) for k, p in env.goal_parts.items()}
                return (_space_json(env.envs.single_observation_space), _space_json(env.envs.single_action_space),
                        spec, parts)
            finally:
                env.close()
    obs_dim = traj.observations.shape[1]

    def box(n: int) -> dict[str, Any]:
        return {"type": "Box", "dtype": "float32", "shape": [n], "low": [-np.inf] * n, "high": [np.inf] * n}

    obs_space = box(obs_dim) if traj.goal_parts is None else {
        "type": "Dict", "subspaces": {k: box(end - start) for k, (start, end) in traj.goal_parts.items()}}
    if traj.discrete:
        act_space = {"type": "Discrete", "dtype": "int64", "start": 0, "n": int(traj.actions.max()) + 1}
    else:
        act_space = box(traj.actions.shape[1])
    return obs_space, act_space, None, traj.goal_parts


MINARI_ID = re.compile(r"^(?:[-_\w][-_\w/]*[-_\w]+/)?[-_\w]+?(?:-v\d+)?$")


def export_minari(traj: Trajectories, directory: str | Path, dataset_id: str | None = None) -> Path:
    """Write `traj` as a Minari dataset folder (needs h5py; Minari itself is not needed):
    `directory/data/main_data.hdf5` and `directory/data/metadata.json`. Put it at
    `$MINARI_DATASETS_PATH/<dataset_id>` (default ~/.minari/datasets) for `minari.load_dataset`
    to find it, or open it anywhere with `minari.MinariDataset(directory / "data")`.

    Each episode's observations have T+1 rows, the last being the observation it ended on.
    A goal env's observations are written as Minari writes dict observations, one dataset per
    part. `dataset_id` defaults to the folder's name; success flags are not exported."""
    h5py = _h5py()
    directory = Path(directory)
    dataset_id = dataset_id or directory.name
    if not MINARI_ID.match(dataset_id):
        raise UserError(f"{dataset_id!r} is not a Minari dataset id; use letters, digits, '-' and '_', such as rung/cartpole-expert-v0")
    obs_space, act_space, env_spec, parts = _minari_spaces(traj)
    metadata: dict[str, Any] = {
        "dataset_id": dataset_id, "minari_version": MINARI_DATASET_VERSION, "data_format": "hdf5",
        "jpeg_encoding": False, "total_episodes": traj.num_episodes, "total_steps": len(traj),
        "observation_space": json.dumps(obs_space), "action_space": json.dumps(act_space),
        "algorithm_name": traj.source or "unknown", "author": ["rung"],
    }
    if env_spec is not None:
        metadata["env_spec"] = env_spec
    data = directory / "data"

    def write_hdf5(tmp: Path) -> None:
        with h5py.File(tmp, "w", track_order=True) as f:
            for i, ep in enumerate(traj.episodes()):
                g = f.create_group(f"episode_{i}")
                g.attrs["id"] = i
                g.attrs["total_steps"] = len(ep)
                obs = np.concatenate([ep.observations, ep.next_observations[-1:]])
                if obs_space["type"] == "Dict":
                    for key, sub in obs_space["subspaces"].items():
                        start, end = parts[key]
                        g.create_dataset(f"observations/{key}", data=obs[:, start:end].astype(sub["dtype"]))
                else:
                    g.create_dataset("observations", data=obs.astype(obs_space["dtype"]))
                g.create_dataset("actions", data=ep.actions.astype(act_space["dtype"]))
                g.create_dataset("rewards", data=ep.rewards)
                g.create_dataset("terminations", data=ep.terminated)
                g.create_dataset("truncations", data=ep.truncated)
            # Minari 0.4 reads the metadata from here; lists do not fit in HDF5 attributes.
            f.attrs.update({k: v for k, v in metadata.items() if not isinstance(v, list)})

    _atomic_write(data / "main_data.hdf5", write_hdf5)
    metadata["dataset_size"] = round((data / "main_data.hdf5").stat().st_size / 1e6, 1)
    # metadata.json last: to Minari 0.5 its presence means the dataset is complete.
    _atomic_write(data / "metadata.json", lambda tmp: tmp.write_text(json.dumps(metadata)))
    return directory


def read_minari(path: str | Path) -> Trajectories:
    """Read a dataset in Minari's HDF5 layout: its folder, its data/ folder, or main_data.hdf5.
    Observations must be flat boxes or dicts of flat boxes (concatenated in the goal-env order
    observation | achieved_goal | desired_goal when those are the keys, else by sorted key).
    An episode whose last step is neither terminated nor truncated is marked truncated."""
    h5py = _h5py()
    path = Path(path)
    if path.is_dir():
        path = next((p for p in (path / "data" / "main_data.hdf5", path / "main_data.hdf5") if p.exists()), path / "data" / "main_data.hdf5")
    name = str(path)
    if not path.exists():
        raise UserError(f"{name}: no such file; point at a Minari dataset folder (one holding data/main_data.hdf5)")
    meta_file = path.parent / "metadata.json"
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise UserError(f"{name}: not a readable HDF5 file ({e})") from None
    with f:
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {k: _attr(v) for k, v in f.attrs.items()}
        keys = sorted((k for k in f.keys() if k.startswith("episode_")), key=lambda k: int(k.split("_")[1]))
        if not keys:
            raise UserError(f"{name}: holds no episode_* groups; not a Minari dataset")
        parts, goal_parts = [], None
        for key in keys:
            g = f[key]
            missing = [k for k in ("observations", "actions", "rewards", "terminations", "truncations") if k not in g]
            if missing:
                raise UserError(f"{name}: {key} has no {missing[0]!r}; not in Minari's layout")
            obs, goal_parts = _minari_obs(g["observations"], name, key)
            rewards = g["rewards"][()]
            if obs.shape[0] != rewards.shape[0] + 1:
                raise UserError(f"{name}: {key} has {obs.shape[0]} observations for {rewards.shape[0]} steps; "
                                "Minari's layout has one more observation than steps")
            terminated, truncated = g["terminations"][()].astype(bool), g["truncations"][()].astype(bool)
            truncated = truncated & ~terminated
            if rewards.shape[0] and not (terminated[-1] or truncated[-1]):
                truncated[-1] = True
            parts.append({"observations": obs[:-1], "next_observations": obs[1:], "actions": g["actions"][()],
                          "rewards": rewards, "terminated": terminated, "truncated": truncated})
    arrays: dict[str, Any] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    arrays["episode_ends"] = np.cumsum([len(p["rewards"]) for p in parts])
    env_id = ""
    if meta.get("env_spec"):
        env_id = json.loads(meta["env_spec"]).get("id", "")
    traj = Trajectories(**_coerce(arrays, name), env_id=env_id, source=str(meta.get("algorithm_name", f"minari:{meta.get('dataset_id', name)}")),
                        goal_parts=goal_parts)
    return check(traj, name)


def _attr(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value.item() if isinstance(value, np.generic) else value


def _minari_obs(node: Any, name: str, episode: str) -> tuple[np.ndarray, dict[str, tuple[int, int]] | None]:
    """An episode's observations as one (T+1, obs_dim) array, and where each dict part lies."""
    if not hasattr(node, "keys"):
        obs = node[()]
        return obs.reshape(obs.shape[0], -1) if obs.ndim == 1 else obs, None
    keys = list(GOAL_KEYS) if set(node.keys()) == set(GOAL_KEYS) else sorted(node.keys())
    arrays = []
    for k in keys:
        if hasattr(node[k], "keys") or node[k].ndim > 2:
            raise UserError(f"{name}: {episode}'s observation {k!r} is nested or not flat; rung reads flat vectors and dicts of them")
        arrays.append(node[k][()].reshape(node[k].shape[0], -1))
    ends = np.cumsum([a.shape[1] for a in arrays]).tolist()
    parts = {k: (end - a.shape[1], end) for k, a, end in zip(keys, arrays, ends)} if keys == list(GOAL_KEYS) else None
    return np.concatenate(arrays, axis=1), parts


# -- recording ----------------------------------------------------------------------------------

@torch.no_grad()
def collect(env_id: str, policy: PolicyFn, episodes: int, seed: int = 0, num_envs: int = 1,
            source: str = "") -> Trajectories:
    """Record `episodes` whole episodes of `policy` in `num_envs` copies of `env_id`, started from
    seeds seed, seed+1, ... The policy sees raw observations (N, obs_dim) and returns (N,)
    integers or (N, act_dim) floats; Box actions are stored clipped, as the env executes them.

    Copy i records episodes i, i+K, i+2K, ... (K copies): a quota fixed before collecting, because
    keeping the first N episodes to finish would favour short ones. A batched env id is recorded
    in its gymnasium twin, whose dynamics it matches."""
    from rung.envs.make import make_env

    if episodes <= 0:
        raise UserError(f"episodes must be > 0, got {episodes}")
    if num_envs <= 0:
        raise UserError(f"num_envs must be > 0, got {num_envs}")
    env_id = env_id.removeprefix("batched/")
    k = min(num_envs, episodes)
    quota = [episodes // k + (i < episodes % k) for i in range(k)]
    env = make_env(env_id, k, seed)
    try:
        finished: list[list[dict[str, np.ndarray]]] = [[] for _ in range(k)]
        running: list[list[dict[str, Any]]] = [[] for _ in range(k)]
        obs = env.reset(seed=seed)
        while any(len(finished[i]) < quota[i] for i in range(k)):
            action = _check_action(policy(obs), env, k)
            if not env.discrete:
                action = np.clip(action, env.action_low, env.action_high).astype(np.float32)
            step = env.step(torch.as_tensor(action))
            done = step.done.numpy()
            for i in range(k):
                if len(finished[i]) >= quota[i]:
                    continue
                running[i].append({
                    "observations": obs[i].numpy(), "actions": action[i], "rewards": float(step.reward[i]),
                    "terminated": bool(step.terminated[i]), "truncated": bool(step.truncated[i]),
                    "next_observations": step.final_obs[i].numpy(),
                    "success": None if step.success is None else bool(step.success[i])})
                if done[i]:
                    finished[i].append({key: np.stack([s[key] for s in running[i]]) for key in running[i][0] if running[i][0][key] is not None})
                    running[i] = []
            obs = step.obs
        goal_parts = None if env.goal_parts is None else {key: (s.start, s.stop) for key, s in env.goal_parts.items()}
    finally:
        env.close()
    ordered = [finished[i][j] for j in range(max(quota)) for i in range(k) if j < quota[i]]
    arrays: dict[str, Any] = {key: np.concatenate([ep[key] for ep in ordered]) for key in ordered[0]}
    arrays["episode_ends"] = np.cumsum([len(ep["rewards"]) for ep in ordered])
    traj = Trajectories(**_coerce(arrays, env_id), env_id=env_id, source=source, seed=seed, goal_parts=goal_parts)
    return check(traj, f"data collected in {env_id}")


def paired_returns(env_id: str, policy: PolicyFn, episodes: int, seed: int) -> np.ndarray:
    """(episodes,) returns of one episode from each start state seed, seed+1, ...: the same
    states for every policy given the same seed, so that two policies' means differ by what
    they do and not by where they started (on MountainCar and Pendulum the start alone moves
    a return by tens)."""
    return collect(env_id, policy, episodes, seed=seed, num_envs=episodes).returns()


def _check_action(action: torch.Tensor, env: Env, n: int) -> np.ndarray:
    """The policy's actions as numpy, after checking they have the shape the env takes."""
    action = torch.as_tensor(action).detach().cpu()
    expected = (n,) if env.discrete else (n, env.action_dim)
    if tuple(action.shape) != expected:
        kind = "integers" if env.discrete else "floats"
        raise UserError(f"the policy returned actions of shape {tuple(action.shape)} for {n} observations; "
                        f"{env.env_id} takes {expected} {kind}")
    return action.numpy().astype(np.int64 if env.discrete else np.float32)


def random_policy(env_id: str, seed: int = 0) -> PolicyFn:
    """Uniform random actions over `env_id`'s action space, from a generator of its own, so a
    recording is reproducible and does not move the global RNG: the low-quality half of a
    mixed-quality dataset, and the floor a clone's return is compared against."""
    from rung.envs.make import make_env

    env = make_env(env_id.removeprefix("batched/"), 1, seed)
    discrete, dim = env.discrete, env.action_dim
    low = None if discrete else torch.as_tensor(env.action_low, dtype=torch.float32)
    high = None if discrete else torch.as_tensor(env.action_high, dtype=torch.float32)
    env.close()
    gen = torch.Generator().manual_seed(seed)

    def policy(obs: torch.Tensor) -> torch.Tensor:
        n = obs.shape[0]
        if discrete:
            return torch.randint(0, dim, (n,), generator=gen)
        return low + (high - low) * torch.rand(n, dim, generator=gen)

    return policy


def policy_from_run(run_dir: str | Path, which: str = "best") -> tuple[str, PolicyFn]:
    """(env id, policy) from a run folder: the deterministic policy of its `which` checkpoint,
    taking raw observations. Where the run normalised observations in the env (on-policy
    algorithms), its frozen statistics are applied first; off-policy agents normalise inside
    themselves (their `obs_norm`), so they get the raw observations."""
    from rung.envs.wrappers import Normalizer
    from rung.evaluation import env_normalizes_obs, load_policy

    cfg, agent, normalizer_state, _ = load_policy(Path(run_dir), which)
    normalizer = None
    if env_normalizes_obs(cfg):
        shape = tuple(normalizer_state["obs_rms"]["mean"].shape)
        normalizer = Normalizer(shape, 1, obs=True, reward=False, gamma=1.0)
        normalizer.load_state_dict(normalizer_state)
        normalizer.frozen = True

    def policy(obs: torch.Tensor) -> torch.Tensor:
        if normalizer is not None:
            obs = torch.as_tensor(np.asarray(normalizer.obs(obs.numpy()), np.float32))
        return agent.action(obs, deterministic=True)

    return cfg.env, policy
