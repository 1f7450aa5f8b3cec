"""DDPG, Deep Deterministic Policy Gradient (Lillicrap et al. 2016), continuous actions.

One critic and a deterministic actor, both with Polyak-averaged targets; the actor ascends
Q(s, mu(s)). Deviations from the paper, as in TD3's reference DDPG and Stable-Baselines3:
Gaussian instead of Ornstein-Uhlenbeck exploration noise, no batch norm, no weight decay.
--compile runs each gradient step as one graph: td3's, without the target smoothing.

Run:  rung train ddpg --env Pendulum-v1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rung.algos import td3
from rung.buffers.replay import fill_before_updates, make_buffer
from rung.config import OffPolicyConfig, non_negative, widths
from rung.envs.batched import parse_randomize
from rung.envs.make import make_env
from rung.nn.offpolicy import DeterministicAgent, critic_step, polyak_update, update_precision
from rung.nn.optim import adam
from rung.objectives import clipped_double_q_target
from rung.rollout.collect import random_actions, step_into_buffer
from rung.run import Counters, EpisodeTally, Run, TrainResult


@dataclass
class Config(OffPolicyConfig):
    compiled_update = True

    env: str = "Pendulum-v1"
    """Gymnasium id of an env with continuous (Box) actions."""
    total_timesteps: int = 20_000
    """Environment steps to train for, summed over all envs."""
    learning_rate: float = 1e-3
    """Adam learning rate of actor and critic."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of the critic."""
    exploration_noise: float = 0.1
    """Std of the Gaussian noise added to actions while collecting, as a fraction of the half-range."""

    def validate(self) -> None:
        super().validate()
        non_negative(self, "exploration_noise")
        widths(self, "hidden_sizes")


def make_agent(cfg: Config, env) -> DeterministicAgent:
    return td3.make_agent(cfg, env, n_critics=1)


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("ddpg", cfg, resume=resume, force=force)
    device = run.device
    envs = make_env(cfg.env, cfg.num_envs, run.env_seed, device=device, randomize=parse_randomize(cfg.randomize))
    agent = make_agent(cfg, envs).to(device)
    actor_opt = adam(agent.actor.parameters(), cfg.learning_rate)
    critic_opt = adam(agent.qf.parameters(), cfg.learning_rate)
    buffer = make_buffer(cfg, envs, device, cfg.seed, log=run.logger.info)
    modules = {"agent": agent, "actor_opt": actor_opt, "critic_opt": critic_opt}
    counters = Counters(updates=0)
    modules["counters"] = counters
    if cfg.save_buffer:
        modules["buffer"] = buffer
    num_iterations = cfg.total_timesteps // cfg.num_envs
    fast_update = td3.make_compiled_update(cfg, agent, actor_opt, critic_opt, device) if cfg.compile else None

    obs = envs.reset().to(device)
    tally = modules["tally"] = EpisodeTally()
    start, step = run.restore(modules, envs)
    min_fill = fill_before_updates(cfg, start, buffer, run.logger.info)
    if start:
        obs = envs.last_obs.to(device)
    stats: dict[str, torch.Tensor] = {}
    iteration = start - 1
    for iteration in run.iterations(start, num_iterations):
        if step < cfg.learning_starts:
            actions = random_actions(envs, device)
        else:
            actions = agent.explore(obs, cfg.exploration_noise)
        obs = step_into_buffer(envs, obs, actions, buffer, tally.episodes, tally.successes).to(device)
        agent.obs_norm.update(obs)
        step_before, step = step, step + cfg.num_envs

        if step >= cfg.learning_starts and iteration % cfg.train_freq == 0 and len(buffer) >= min_fill:
            for _ in range(cfg.gradient_steps):
                b = buffer.sample(cfg.batch_size)
                if fast_update is not None:
                    critic_loss, q_mean, pi_loss, pi_stats = fast_update(b, None, True)
                else:
                    o, o_next = agent.obs_norm(b.obs), agent.obs_norm(b.next_obs)
                    with torch.no_grad(), update_precision(cfg.precision, device):
                        target = clipped_double_q_target(agent.qf_target(o_next, agent.actor_target(o_next)),
                                                         b.rewards, b.terminated, cfg.gamma)
                    critic_loss, q_mean = critic_step(agent.qf, critic_opt, o, b.actions, target, cfg.precision, device)
                    pi_loss, pi_stats = td3.actor_step(cfg, agent, actor_opt, o, device)
                polyak_update(agent.qf_target, agent.qf, cfg.tau)
                polyak_update(agent.actor_target, agent.actor, cfg.tau)
                counters["updates"] += 1
            stats = {"losses/critic": critic_loss.detach(), "losses/q": q_mean,
                     "losses/actor": pi_loss.detach().mean(), **{f"losses/{k}": v for k, v in pi_stats.items()}}

        if (iteration + 1) % cfg.log_every == 0:
            tally.flush(run, iteration + 1, step, {**stats, "charts/updates": counters["updates"]}, cfg.log_every * cfg.num_envs)
        run.maybe_evaluate(agent, envs, step_before, step)
        run.maybe_checkpoint(iteration + 1, step, modules, envs)
        if run.should_stop:
            break
    return run.finish(agent, envs, iteration + 1, step, modules)
