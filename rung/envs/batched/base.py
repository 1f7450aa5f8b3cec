"""BatchedEnv: N copies of an environment stepped as one set of tensor operations on one device.

A subclass gives the physics as pure tensor functions (`initial_state`, `dynamics`, `observe`)
over a state of shape (N, S) and physical parameters of shape (N,) each; this class does
everything around them: auto-reset inside `step`, time limits, episode statistics, the final
observation of an ended episode, seeding through a torch.Generator, domain randomisation and
observation/reward normalisation. Nothing in `step` copies to the host.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import torch

from rung.batch import EnvStep
from rung.envs.wrappers import Normalizer
from rung.errors import UserError


class BatchedEnv:
    # -- what a subclass declares --------------------------------------------------------------
    name: ClassVar[str]
    obs_dim: ClassVar[int]
    state_dim: ClassVar[int]
    discrete: ClassVar[bool]
    action_dim: ClassVar[int]  # number of actions if discrete, else the action vector's size
    max_episode_steps: ClassVar[int]
    PARAMS: ClassVar[dict[str, float]]  # physical parameters and their defaults (gymnasium's values)
    action_low: ClassVar[float] = -1.0
    action_high: ClassVar[float] = 1.0
    # A parameter that caps the action's size (Pendulum's max_torque): actions are clamped to the
    # action space first, so a value above action_high would be no cap at all.
    action_cap: ClassVar[str | None] = None
    # Parameters that may be randomised down to 0; every other one must stay above it.
    ZERO_ALLOWED: ClassVar[frozenset[str]] = frozenset({"gravity", "link_com_pos_1", "link_com_pos_2"})

    def initial_state(self, n: int) -> torch.Tensor:  # (n, state_dim), drawn from self.generator
        raise NotImplementedError

    def dynamics(self, state: torch.Tensor, action: torch.Tensor, p: dict[str, torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # next state, reward, terminated
        raise NotImplementedError

    def observe(self, state: torch.Tensor) -> torch.Tensor:  # (N, obs_dim)
        raise NotImplementedError

    # -- shared machinery ----------------------------------------------------------------------

    @classmethod
    def check_randomize(cls, randomize: dict[str, tuple[float, float]]) -> None:
        """A one-line UserError for a parameter this env does not have or a range with low > high."""
        for key, (low, high) in randomize.items():
            if key not in cls.PARAMS:
                raise UserError(f"batched/{cls.name} has no parameter {key!r} to randomise; it has {', '.join(cls.PARAMS)}")
            if not low <= high:
                raise UserError(f"randomisation range for {key} must be low:high with low <= high, got {low}:{high}")
            # Masses, lengths, forces and torques divide or cap the dynamics: at 0 or below they give
            # inf/NaN states or a torque forced to one side. Gravity and a centre of mass may be 0.
            if low < 0 or (low == 0 and key not in cls.ZERO_ALLOWED):
                least = ">= 0" if key in cls.ZERO_ALLOWED else "> 0"
                raise UserError(f"batched/{cls.name}: {key} must be {least} to be physical; got {low}:{high}")
            if key == cls.action_cap and high > cls.action_high:
                raise UserError(f"batched/{cls.name}: {key} above {cls.action_high} has no effect (actions are "
                                f"clipped to the action space, {cls.action_low}:{cls.action_high}); got {low}:{high}")

    def __init__(self, num_envs: int, seed: int = 0, device: torch.device | str = "cpu", *,
                 dtype: torch.dtype = torch.float32, randomize: dict[str, tuple[float, float]] | None = None,
                 normalize_obs: bool = False, normalize_reward: bool = False, gamma: float = 0.99,
                 compile: bool = False):
        self.num_envs, self.seed = num_envs, seed
        self.device, self.dtype = torch.device(device), dtype
        self.obs_shape = (self.obs_dim,)
        self.env_id = f"batched/{self.name}"
        self.randomize = dict(randomize or {})
        self.check_randomize(self.randomize)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        # Replaced, never changed in place: an env may keep values derived from them until a
        # parameter tensor is swapped (CartPole's masses).
        self.params = {k: torch.full((num_envs,), v, dtype=dtype, device=self.device) for k, v in self.PARAMS.items()}
        self.normalizer = Normalizer(self.obs_shape, num_envs, obs=normalize_obs, reward=normalize_reward,
                                     gamma=gamma, device=self.device)
        self.state = torch.zeros(num_envs, self.state_dim, dtype=dtype, device=self.device)
        self.elapsed = torch.zeros(num_envs, dtype=torch.long, device=self.device)
        self.ep_return = torch.zeros(num_envs, dtype=torch.float64, device=self.device)  # of the running episode
        self.last_obs: torch.Tensor | None = None
        self._step_fn = torch.compile(self._transition, dynamic=False) if compile else self._transition

    def uniform(self, n: int, low: float | torch.Tensor, high: float | torch.Tensor, *shape: int) -> torch.Tensor:
        u = torch.rand((n, *shape), generator=self.generator, dtype=self.dtype, device=self.device)
        return low + (high - low) * u

    def _sample_params(self, n: int) -> dict[str, torch.Tensor]:
        """Fresh values of the randomised parameters for `n` envs, (n,) each."""
        return {k: self.uniform(n, low, high) for k, (low, high) in self.randomize.items()}

    def reset(self, seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            self.generator.manual_seed(seed)
        self.state = self.initial_state(self.num_envs)
        self.params.update(self._sample_params(self.num_envs))
        self.elapsed = torch.zeros_like(self.elapsed)
        self.ep_return = torch.zeros_like(self.ep_return)
        # The reward normaliser's running discounted return belongs to the episodes just ended.
        self.normalizer.returns = torch.zeros_like(self.normalizer.returns)
        self.last_obs = self._obs(self.observe(self.state))
        return self.last_obs

    def _obs(self, obs: torch.Tensor, update: bool = True) -> torch.Tensor:
        return self.normalizer.obs(obs, update).to(torch.float32)

    def _transition(self, state, actions, params, elapsed, ep_return, fresh_state):
        """One step of every env and the auto-reset, as a pure function of tensors (so that
        torch.compile can fuse it). Returns the new state, counters and what the step saw.
        With `fresh_state` None the ended envs are not reset here (`step` does it)."""
        if not self.discrete:
            actions = actions.clamp(self.action_low, self.action_high)
        nxt, reward, terminated = self.dynamics(state, actions, params)
        elapsed = elapsed + 1
        truncated = (elapsed >= self.max_episode_steps) & ~terminated
        done = terminated | truncated
        final_obs = self.observe(nxt)
        episode_return = ep_return + reward
        if fresh_state is not None:
            # Reset without asking which envs are done (that would be a host copy): fresh states
            # were drawn for every env, and are kept where done. A full-shape mask: where() with
            # a broadcast (N, 1) mask measured 2.7x slower than with an (N, S) one.
            nxt = torch.where(done.unsqueeze(-1).expand_as(nxt), fresh_state, nxt)
        return (nxt, torch.where(done, 0, elapsed), torch.where(done, 0.0, episode_return), reward, terminated,
                truncated, done, final_obs, self.observe(nxt) if fresh_state is not None else final_obs,
                episode_return, elapsed)

    def step(self, actions: torch.Tensor) -> EnvStep:
        # On an accelerator every env draws a fresh state each step and keeps it where its episode
        # ended, since asking which ended would stall the stream. On the CPU that question costs
        # nothing, while the dense draw (torch's CPU generator, about 7 ns a number) was the
        # largest single cost of a step at 4096 envs: there only the ended envs draw.
        dense = self.device.type != "cpu"
        fresh = self.initial_state(self.num_envs) if dense else None
        (state, self.elapsed, self.ep_return, reward, terminated, truncated, done, final_obs, obs,
         episode_return, episode_length) = self._step_fn(self.state, actions, self.params, self.elapsed,
                                                          self.ep_return, fresh)
        none_ended = False
        if dense:
            for k, v in self._sample_params(self.num_envs).items():
                self.params[k] = torch.where(done, v, self.params[k])
        else:
            none_ended = not bool(done.any())  # most steps end no episode: one op to learn that
            if not none_ended:
                ended = done.nonzero().squeeze(-1)
                # Out of place: `final_obs` may be a view of the pre-reset state.
                state = state.index_put((ended,), self.initial_state(len(ended)))
                obs = self.observe(state)
                for k, v in self._sample_params(len(ended)).items():
                    self.params[k] = self.params[k].index_put((ended,), v)
        self.state = state
        # On the CPU with no env ended, `obs` is `final_obs`: one normalisation serves both.
        obs = self._obs(obs)
        # Where an env did not end, its final observation is its observation: normalised with
        # the same (just updated) statistics, the two agree bit for bit without a where().
        final = obs if none_ended else self._obs(final_obs, update=False)
        self.last_obs = obs
        if self.normalizer.norm_reward:
            reward = self.normalizer.reward(reward.to(torch.float64), done)
        return EnvStep(obs=obs, reward=reward.to(torch.float32), terminated=terminated, truncated=truncated,
                       final_obs=final, episode_return=episode_return, episode_length=episode_length)

    def render(self) -> Any:
        raise UserError(f"{self.env_id} does not render; evaluate the policy on the gymnasium env {self.name} for video")

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state.clone(), "elapsed": self.elapsed.clone(), "ep_return": self.ep_return.clone(),
                "params": {k: v.clone() for k, v in self.params.items()}, "generator": self.generator.get_state(),
                "normalizer": self.normalizer.state_dict(), "last_obs": self.last_obs}

    def load_state_dict(self, state: dict[str, Any], restore_envs: bool = True) -> bool:
        """True when the envs' state was restored (the running episodes go on)."""
        self.normalizer.load_state_dict(state["normalizer"])
        if not restore_envs or state["state"].shape[0] != self.num_envs:
            # The current observation was normalised by statistics of the reset alone.
            self.last_obs = self._obs(self.observe(self.state), update=False)
            return False
        self.state = state["state"].to(self.device)
        self.elapsed = state["elapsed"].to(self.device)
        self.ep_return = state["ep_return"].to(self.device)
        self.params = {k: v.to(self.device) for k, v in state["params"].items()}
        saved = state["generator"]
        if saved.numel() == self.generator.get_state().numel():
            self.generator.set_state(saved)
        else:
            # Saved on another kind of device (a CUDA generator's state is 16 bytes, a CPU one's
            # 5,056): the running episodes go on, and later draws come from a generator seeded
            # by that state, the same on every resume of the checkpoint.
            self.generator.manual_seed(int.from_bytes(hashlib.sha256(saved.numpy().tobytes()).digest()[:8], "little"))
        self.last_obs = state["last_obs"].to(self.device)
        return True

    def close(self) -> None:
        pass
