"""Hindsight Experience Replay (Andrychowicz et al. 2017): a replay buffer that, when sampling,
swaps the desired goal of some transitions for a goal the agent did reach later in the same
episode, and recomputes the reward for it, so a sparse-reward goal env yields successes to learn
from before the agent ever reaches the goal it was asked for.

Simplifications, and why:
- Only complete episodes are relabelled. A running episode has no final transition and only part
  of its future; its transitions are sampled with their own goal until it ends.
- The relabelled share of a batch is a fixed count, round(B * k / (k + 1)) for k sampled goals,
  not a coin per sample, so a batch's make-up does not vary; uniform sampling of the transitions
  keeps each one's chance of being relabelled the same.
- `terminated` is kept as stored: goal envs (Fetch) never terminate, they are truncated.
- Rewards are recomputed from raw goals, so the buffer must be fed unnormalised observations and
  rewards (normalise at the network input instead).
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import torch

from rung.buffers.replay import ReplayBuffer, Transitions

ComputeReward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (B, goal), (B, goal) -> (B,)


class HerReplayBuffer(ReplayBuffer):
    """A ReplayBuffer of a goal env's observations, kept apart by part (`goal_parts`, as
    GymVecEnv sets it) so goals can be replaced. `add` takes and `sample` returns flat vectors.

    Episode bookkeeping is per slot (row, env column): the absolute step at which the slot's
    episode started and, once it has ended, its length. Absolute steps rather than ring rows make
    "has this episode's first row been overwritten" one comparison with the oldest stored step."""

    EXTRA_BYTES_PER_SLOT = 16  # ep_start and ep_len, an int64 each

    def __init__(self, capacity: int, num_envs: int, goal_parts: dict[str, slice], obs_dim: int,
                 action_shape: tuple[int, ...], compute_reward: ComputeReward, *,
                 strategy: Literal["future", "final", "episode"] = "future", n_sampled_goal: int = 4,
                 discrete: bool = False, device: torch.device | str = "cpu", seed: int = 0,
                 check_memory: bool = True):
        stops = [0] + [s.stop for s in goal_parts.values()]
        if ([s.start for s in goal_parts.values()] != stops[:-1] or stops[-1] != obs_dim
                or not {"achieved_goal", "desired_goal"} <= goal_parts.keys()):
            raise ValueError(f"goal_parts {goal_parts} must tile 0..{obs_dim} in order and name achieved_goal "
                             "and desired_goal; pass GymVecEnv.goal_parts")
        if strategy not in ("future", "final", "episode"):
            raise ValueError(f"unknown HER strategy {strategy!r}; use future, final or episode")
        self.goal_parts = dict(goal_parts)
        self.compute_reward = compute_reward
        self.strategy, self.n_sampled_goal = strategy, n_sampled_goal
        spec = {k: (s.stop - s.start,) for k, s in goal_parts.items()}
        super().__init__(capacity, num_envs, spec, action_shape, discrete, device=device, seed=seed,
                         check_memory=check_memory)
        lead = (self.rows, num_envs)
        self.ep_start = torch.zeros(lead, dtype=torch.int64, device=self.device)  # absolute step the slot's episode began
        self.ep_len = torch.zeros(lead, dtype=torch.int64, device=self.device)  # its length; 0 while it runs
        self.steps = 0  # rows written since the start: the absolute step of the next row
        self.cur_start = torch.zeros(num_envs, dtype=torch.int64, device=self.device)  # each env's running episode
        self.last_relabelled: torch.Tensor | None = None  # (B,) bool: which samples of the last batch got a new goal

    def _split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: flat[..., s] for k, s in self.goal_parts.items()}

    def _join(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([parts[k] for k in self.goal_parts], dim=-1)

    def add(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
            terminated: torch.Tensor, done: torch.Tensor) -> int:
        """One step of every env: flat (N, obs_dim) observations, `next_obs` the final one where
        the episode ended, `done` (N,) bool where it ended (terminated or truncated)."""
        step = self.steps
        row = super().add(self._split(obs), actions, rewards, self._split(next_obs), terminated)
        self.ep_start[row] = self.cur_start
        self.ep_len[row] = 0
        self.steps += 1
        oldest = self.steps - self.rows  # the oldest step still stored; earlier ones are overwritten
        for col in torch.nonzero(done.cpu()).flatten().tolist():
            start = int(self.cur_start[col])
            # Only the rows still holding this episode learn its length; if its first row is
            # gone, `start < oldest` keeps it from being relabelled anyway.
            kept = torch.arange(max(start, oldest), step + 1, device=self.device) % self.rows
            self.ep_len[kept, col] = step + 1 - start
            self.cur_start[col] = step + 1
        return row

    def sample(self, batch_size: int) -> Transitions:
        rows, cols = self.sample_index(batch_size)
        batch = self.gather(rows, cols)
        u = torch.rand(batch_size, generator=self.generator, device=self.device)

        # The absolute step last written to each sampled row, hence its offset in its episode.
        at = rows + self.rows * torch.div(self.steps - 1 - rows, self.rows, rounding_mode="floor")
        start, length = self.ep_start[rows, cols], self.ep_len[rows, cols]
        offset = at - start
        n_her = round(batch_size * self.n_sampled_goal / (self.n_sampled_goal + 1))
        relabel = (torch.arange(batch_size, device=self.device) < n_her) & (length > 0)
        relabel &= start >= self.steps - self.rows

        if self.strategy == "future":
            first, count = offset, length - offset
        elif self.strategy == "final":
            first, count = length - 1, torch.ones_like(length)
        else:
            first, count = torch.zeros_like(length), length
        pick = first + torch.minimum((u * count).long(), count - 1).clamp(min=0)
        goal_rows = (start + pick) % self.rows
        new_goal = self.next_obs["achieved_goal"][goal_rows, cols]

        obs, next_obs = batch.obs, batch.next_obs
        keep = ~relabel.unsqueeze(-1)
        obs["desired_goal"] = torch.where(keep, obs["desired_goal"], new_goal)
        next_obs["desired_goal"] = torch.where(keep, next_obs["desired_goal"], new_goal)
        rewards = batch.rewards
        if relabel.any():
            idx = torch.nonzero(relabel).flatten()
            fresh = self.compute_reward(next_obs["achieved_goal"][idx], next_obs["desired_goal"][idx])
            rewards = rewards.index_put((idx,), torch.as_tensor(fresh, dtype=rewards.dtype).to(self.device))
        self.last_relabelled = relabel
        return Transitions(obs=self._join(obs), actions=batch.actions, rewards=rewards,
                           next_obs=self._join(next_obs), terminated=batch.terminated)

    # -- checkpointing: the bookkeeping travels with the data ---------------------------------

    def _tensors(self) -> dict[str, Any]:
        return {**super()._tensors(), "ep_start": self.ep_start, "ep_len": self.ep_len}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps": self.steps, "cur_start": self.cur_start.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.steps = state["steps"]
        self.cur_start.copy_(state["cur_start"])

    def cut_episodes(self) -> None:
        """The envs were reset without ending their episodes (a resume whose simulators did not
        pickle): the stored parts of those episodes keep length 0, so they are never relabelled,
        and each env's next step starts a new episode."""
        self.cur_start.fill_(self.steps)
