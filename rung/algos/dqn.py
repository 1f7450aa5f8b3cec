"""DQN (Mnih et al. 2015) with double-Q targets (van Hasselt et al. 2016), discrete actions.

Epsilon-greedy exploration annealed linearly, a replay buffer, a target network refreshed every
`target_update_interval` env steps (hard copy with tau = 1, or Polyak with tau < 1), Huber loss
and gradient-norm clipping. The defaults are RL Zoo's CartPole-v1 settings.

Run:  rung train dqn --env CartPole-v1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rung.buffers.replay import fill_before_updates, make_buffer
from rung.config import OffPolicyConfig, in_range, positive, widths
from rung.envs.batched import parse_randomize
from rung.envs.make import make_env
from rung.errors import UserError
from rung.nn.offpolicy import DQNAgent, polyak_update, update_precision
from rung.nn.optim import adam
from rung.objectives import dqn_target, td_loss
from rung.rollout.collect import random_actions, step_into_buffer
from rung.run import EpisodeTally, Run, TrainResult


@dataclass
class Config(OffPolicyConfig):
    env: str = "CartPole-v1"
    """Gymnasium id of an env with discrete actions."""
    total_timesteps: int = 50_000
    """Environment steps to train for, summed over all envs."""
    learning_rate: float = 2.3e-3
    """Adam learning rate."""
    buffer_size: int = 100_000
    """Replay capacity in transitions."""
    batch_size: int = 64
    """Transitions per gradient step."""
    learning_starts: int = 1_000
    """Env steps of uniformly random actions before learning begins."""
    train_freq: int = 256
    """Update every this many iterations."""
    gradient_steps: int = 128
    """Gradient steps per update."""
    tau: float = 1.0
    """1.0 copies the online network into the target; less is a Polyak average."""
    target_update_interval: int = 10
    """Env steps between target-network updates."""
    exploration_fraction: float = 0.16
    """Fraction of training over which epsilon falls from its initial to its final value."""
    exploration_initial_eps: float = 1.0
    """Epsilon at the start."""
    exploration_final_eps: float = 0.04
    """Epsilon after the annealing."""
    double_q: bool = True
    """Double DQN: the online network picks the next action and the target network values it."""
    loss: Literal["huber", "mse"] = "huber"
    """TD regression loss."""
    max_grad_norm: float = 10.0
    """Global gradient-norm clip."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the Q-network."""

    def validate(self) -> None:
        super().validate()
        positive(self, "target_update_interval", "max_grad_norm")
        in_range(self, "exploration_fraction", 0.0, 1.0)
        in_range(self, "exploration_initial_eps", 0.0, 1.0)
        in_range(self, "exploration_final_eps", 0.0, 1.0)
        widths(self, "hidden_sizes")


def make_agent(cfg: Config, env) -> DQNAgent:
    if not env.discrete:
        raise UserError(f"dqn needs discrete actions and {cfg.env} has continuous ones; use sac, td3 or ddpg")
    return DQNAgent(env.obs_shape[0], env.action_dim, cfg.hidden_sizes, cfg.normalize_obs)


def epsilon(cfg: Config, step: int) -> float:
    span = cfg.exploration_fraction * cfg.total_timesteps
    frac = min(1.0, step / span) if span > 0 else 1.0
    return cfg.exploration_initial_eps + frac * (cfg.exploration_final_eps - cfg.exploration_initial_eps)


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("dqn", cfg, resume=resume, force=force)
    device = run.device
    envs = make_env(cfg.env, cfg.num_envs, run.env_seed, device=device, randomize=parse_randomize(cfg.randomize))
    agent = make_agent(cfg, envs).to(device)
    opt = adam(agent.q.parameters(), cfg.learning_rate)
    buffer = make_buffer(cfg, envs, device, cfg.seed, log=run.logger.info)
    modules = {"agent": agent, "optimizer": opt}
    if cfg.save_buffer:
        modules["buffer"] = buffer
    num_iterations = cfg.total_timesteps // cfg.num_envs
    target_every = max(cfg.target_update_interval // cfg.num_envs, 1)

    obs = envs.reset().to(device)
    tally = modules["tally"] = EpisodeTally()
    start, step = run.restore(modules, envs)
    min_fill = fill_before_updates(cfg, start, buffer, run.logger.info)
    if start:
        obs = envs.last_obs.to(device)
    stats: dict[str, torch.Tensor] = {}
    iteration = start - 1
    for iteration in run.iterations(start, num_iterations):
        eps = epsilon(cfg, step)
        actions = random_actions(envs, device)
        if step >= cfg.learning_starts:
            with torch.no_grad():
                greedy = agent.action(obs)
            actions = torch.where(torch.rand(envs.num_envs, device=device) < eps, actions, greedy)
        obs = step_into_buffer(envs, obs, actions, buffer, tally.episodes, tally.successes).to(device)
        agent.obs_norm.update(obs)
        step_before, step = step, step + cfg.num_envs

        if step >= cfg.learning_starts and iteration % cfg.train_freq == 0 and len(buffer) >= min_fill:
            for _ in range(cfg.gradient_steps):
                b = buffer.sample(cfg.batch_size)
                o, o_next = agent.obs_norm(b.obs), agent.obs_norm(b.next_obs)
                with torch.no_grad(), update_precision(cfg.precision, device):
                    target = dqn_target(agent.q_target(o_next), b.rewards, b.terminated, cfg.gamma,
                                        agent.q(o_next) if cfg.double_q else None)
                with update_precision(cfg.precision, device):
                    q = agent.q(o).gather(-1, b.actions.unsqueeze(-1)).squeeze(-1)
                loss, q_stats = td_loss(q, target, cfg.loss)
                opt.zero_grad(set_to_none=True)
                loss.mean().backward()
                torch.nn.utils.clip_grad_norm_(agent.q.parameters(), cfg.max_grad_norm)
                opt.step()
            stats = {"losses/td": loss.detach().mean(), **{f"losses/{k}": v for k, v in q_stats.items()}}
        if iteration % target_every == 0:
            polyak_update(agent.q_target, agent.q, cfg.tau)

        if (iteration + 1) % cfg.log_every == 0:
            tally.flush(run, iteration + 1, step, {**stats, "charts/epsilon": eps}, cfg.log_every * cfg.num_envs)
        run.maybe_evaluate(agent, envs, step_before, step)
        run.maybe_checkpoint(iteration + 1, step, modules, envs)
        if run.should_stop:
            break
    return run.finish(agent, envs, iteration + 1, step, modules)
