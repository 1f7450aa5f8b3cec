"""A ring buffer of transitions in preallocated tensors.

Layout is (capacity, num_envs): row t holds what every env did at its t-th stored step, so each
column is one env's timeline in order, which is what episode-aware sampling (HER) needs. The
memory is allocated up front; the constructor says how much and refuses a buffer that would not
fit in the RAM available now, because finding out at step 900k by the OOM killer loses the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rung.errors import UserError

Obs = torch.Tensor | dict[str, torch.Tensor]
ObsSpec = tuple[int, ...] | dict[str, tuple[int, ...]]


@dataclass
class Transitions:
    """A sampled minibatch. Shapes: B samples."""

    obs: Obs  # (B, *obs_shape), or a dict of such tensors
    actions: torch.Tensor  # (B,) int64 for discrete actions, (B, act_dim) float otherwise
    rewards: torch.Tensor  # (B,)
    next_obs: Obs  # (B, *obs_shape): the observation after the action (the final one where the episode ended)
    terminated: torch.Tensor  # (B,) float 1.0 where the MDP ended: no bootstrap. Truncation is not stored: it bootstraps.


def available_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        try:
            with open("/proc/meminfo") as f:
                info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            return info.get("MemAvailable")
        except OSError:
            return None


def _alloc(spec: ObsSpec, lead: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Obs:
    if isinstance(spec, dict):
        return {k: torch.zeros(*lead, *shape, dtype=dtype, device=device) for k, shape in spec.items()}
    return torch.zeros(*lead, *spec, dtype=dtype, device=device)


def _nbytes(x: Obs) -> int:
    if isinstance(x, dict):
        return sum(v.nbytes for v in x.values())
    return x.nbytes


def _put(store: Obs, row: int, value: Obs) -> None:
    if isinstance(store, dict):
        for k, v in store.items():
            v[row] = value[k]
    else:
        store[row] = value


def _take(store: Obs, rows: torch.Tensor, cols: torch.Tensor) -> Obs:
    if isinstance(store, dict):
        return {k: v[rows, cols] for k, v in store.items()}
    return store[rows, cols]


def bytes_needed(capacity: int, num_envs: int, obs_spec: ObsSpec, action_shape: tuple[int, ...], discrete: bool,
                 extra_per_slot: int = 0) -> int:
    """What a buffer of this shape will allocate: float32 observations twice (obs and next_obs),
    float32 actions or one int64 for a discrete one, float32 reward and terminated, and
    `extra_per_slot` bytes of a subclass's own bookkeeping."""
    shapes = obs_spec.values() if isinstance(obs_spec, dict) else [obs_spec]
    obs_floats = sum(int(torch.Size(s).numel()) for s in shapes)
    action_bytes = 8 if discrete else 4 * int(torch.Size(action_shape).numel())
    per_slot = 4 * 2 * obs_floats + action_bytes + 4 + 4 + extra_per_slot
    return capacity * num_envs * per_slot


class ReplayBuffer:
    """`capacity` transitions in all (rounded down to a multiple of num_envs), oldest overwritten.

    Sampling draws from `generator` only, so a seeded run samples the same minibatches every time
    and a restored buffer (state_dict) continues the same sequence."""

    EXTRA_BYTES_PER_SLOT = 0  # what a subclass stores per transition besides the fields here

    def __init__(self, capacity: int, num_envs: int, obs_spec: ObsSpec, action_shape: tuple[int, ...],
                 discrete: bool, *, device: torch.device | str = "cpu", seed: int = 0, check_memory: bool = True):
        if capacity < num_envs:
            raise UserError(f"--buffer-size {capacity} is smaller than --num-envs {num_envs}; raise it")
        self.rows = capacity // num_envs
        self.num_envs, self.discrete, self.device = num_envs, discrete, torch.device(device)
        self.nbytes = bytes_needed(self.rows, num_envs, obs_spec, action_shape, discrete, self.EXTRA_BYTES_PER_SLOT)
        free = available_bytes() if check_memory and self.device.type == "cpu" else None
        if free is not None and self.nbytes > 0.9 * free:
            raise UserError(f"a replay buffer of {capacity:,} transitions needs {self.nbytes / 2**30:.2f} GiB and "
                            f"{free / 2**30:.2f} GiB is available; lower --buffer-size")
        lead = (self.rows, num_envs)
        self.obs = _alloc(obs_spec, lead, torch.float32, self.device)
        self.next_obs = _alloc(obs_spec, lead, torch.float32, self.device)
        if discrete:
            self.actions = torch.zeros(*lead, dtype=torch.int64, device=self.device)
        else:
            self.actions = torch.zeros(*lead, *action_shape, dtype=torch.float32, device=self.device)
        self.rewards = torch.zeros(lead, dtype=torch.float32, device=self.device)
        self.terminated = torch.zeros(lead, dtype=torch.float32, device=self.device)
        self.pos, self.full = 0, False
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        """Transitions stored."""
        return (self.rows if self.full else self.pos) * self.num_envs

    @property
    def capacity(self) -> int:
        """Transitions it holds when full (the asked-for size rounded down to whole rows of envs)."""
        return self.rows * self.num_envs

    def add(self, obs: Obs, actions: torch.Tensor, rewards: torch.Tensor, next_obs: Obs, terminated: torch.Tensor,
            done: torch.Tensor | None = None) -> int:
        """Store one step of every env (leading dimension num_envs); returns the row written.
        `done` (episode ended, by termination or time limit) matters only to episode-aware
        buffers such as HER's; this one ignores it."""
        row = self.pos
        _put(self.obs, row, obs)
        _put(self.next_obs, row, next_obs)
        self.actions[row] = actions
        self.rewards[row] = rewards
        self.terminated[row] = terminated
        self.pos += 1
        if self.pos == self.rows:
            self.pos, self.full = 0, True
        return row

    def sample_index(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform (row, env column) pairs over what is stored."""
        filled = self.rows if self.full else self.pos
        if filled == 0:
            raise RuntimeError("sampling from an empty replay buffer")
        flat = torch.randint(0, filled * self.num_envs, (batch_size,), generator=self.generator, device=self.device)
        return flat // self.num_envs, flat % self.num_envs

    def sample(self, batch_size: int) -> Transitions:
        rows, cols = self.sample_index(batch_size)
        return self.gather(rows, cols)

    def gather(self, rows: torch.Tensor, cols: torch.Tensor) -> Transitions:
        return Transitions(obs=_take(self.obs, rows, cols), actions=self.actions[rows, cols],
                           rewards=self.rewards[rows, cols], next_obs=_take(self.next_obs, rows, cols),
                           terminated=self.terminated[rows, cols])

    # -- checkpointing: only the filled part, so a young run's checkpoint stays small ----------

    def _tensors(self) -> dict[str, Any]:
        return {"obs": self.obs, "next_obs": self.next_obs, "actions": self.actions, "rewards": self.rewards,
                "terminated": self.terminated}

    def state_dict(self) -> dict[str, Any]:
        filled = self.rows if self.full else self.pos

        def head(x: Obs) -> Obs:
            return {k: v[:filled].clone() for k, v in x.items()} if isinstance(x, dict) else x[:filled].clone()

        return {"pos": self.pos, "full": self.full, "generator": self.generator.get_state(),
                "data": {k: head(v) for k, v in self._tensors().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, saved in state["data"].items():
            store = getattr(self, name)
            pairs = store.items() if isinstance(store, dict) else [(None, store)]
            for key, dst in pairs:
                src = saved[key] if key is not None else saved
                # A ring that has wrapped is full at its own size only: in a larger one the rows
                # past it would be sampled as transitions, all zeros.
                wrong_rows = src.shape[0] != dst.shape[0] if state["full"] else src.shape[0] > dst.shape[0]
                if src.shape[1:] != dst.shape[1:] or wrong_rows:
                    raise UserError(f"the checkpoint's replay buffer has shape {tuple(src.shape)}, this run's {tuple(dst.shape)}; "
                                    "resume with the same --buffer-size and --num-envs")
                dst[: src.shape[0]] = src.to(dst.device)
        self.pos, self.full = state["pos"], state["full"]
        if self.pos == self.rows:  # resumed into a buffer exactly as large as what it held: now full
            self.pos, self.full = 0, True
        self.generator.set_state(state["generator"])


def make_buffer(cfg: Any, env: Any, device: torch.device | str, seed: int,
                log: Any = None) -> ReplayBuffer:
    """The replay buffer an off-policy config asks for, shaped for `env`: HER's when cfg.her.
    `log` (a callable taking a line) is told what it allocated."""
    buffer = _make_buffer(cfg, env, device, seed)
    if log is not None:
        log(f"replay buffer: {buffer.capacity:,} transitions, {buffer.nbytes / 2**20:,.1f} MiB on {buffer.device}"
            + (f", HER ({cfg.her_strategy}, {cfg.her_n_sampled_goal} goals per real one)" if cfg.her else ""))
    return buffer


def fill_before_updates(cfg: Any, start: int, buffer: ReplayBuffer, log: Any = None) -> int:
    """Transitions the buffer must hold before gradient steps (re)start: one batch; and on a run
    resumed without its buffer (no --save-buffer), learning_starts' worth too, gathered by the
    restored policy. Otherwise the trained networks would take their next updates on a few
    hundred transitions of one or two episodes, as many times over as the update rate allows."""
    if not start or len(buffer):
        return cfg.batch_size
    need = min(max(cfg.learning_starts, cfg.batch_size), buffer.capacity)
    if log is not None:
        log(f"the checkpoint holds no replay buffer (--save-buffer keeps it): {need:,} fresh transitions are gathered "
            "before updates resume")
    return need


def _make_buffer(cfg: Any, env: Any, device: torch.device | str, seed: int) -> ReplayBuffer:
    action_shape = () if env.discrete else (env.action_dim,)
    if cfg.her:
        parts = getattr(env, "goal_parts", None)
        if parts is None:
            raise UserError(f"--her needs a goal-conditioned env such as FetchReach-v4; {cfg.env} has no achieved and desired goals")
        from rung.buffers.her import HerReplayBuffer

        return HerReplayBuffer(cfg.buffer_size, env.num_envs, parts, env.obs_shape[0], action_shape, env.compute_reward,
                               strategy=cfg.her_strategy, n_sampled_goal=cfg.her_n_sampled_goal, discrete=env.discrete,
                               device=device, seed=seed)
    return ReplayBuffer(cfg.buffer_size, env.num_envs, env.obs_shape, action_shape, env.discrete, device=device, seed=seed)
