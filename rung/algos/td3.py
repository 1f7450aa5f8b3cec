"""TD3, Twin Delayed DDPG (Fujimoto et al. 2018), continuous actions.

Three changes to DDPG, each against overestimation: the target takes the minimum of two critics,
the actor and the target networks move once per `policy_delay` critic steps, and the target
action is smoothed with clipped noise. Exploration is Gaussian noise on the actor's action.

--compile runs each gradient step as one torch.compile'd graph, as sac's does (ddpg shares it):
gradients through torch.func and Adam written out elementwise on the optimisers' own state, with
the smoothing noise drawn outside the graph in the eager order, so the maths and the draws are
eager's; the first steps pay the compile time.

Run:  rung train td3 --env Pendulum-v1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rung.buffers.replay import fill_before_updates, make_buffer
from rung.config import OffPolicyConfig, non_negative, positive, widths
from rung.envs.batched import parse_randomize
from rung.envs.make import make_env
from rung.errors import UserError
from rung.nn.offpolicy import (
    DeterministicAgent,
    compile_update,
    critic_step,
    functional_critic_loss,
    polyak_update,
    update_precision,
)
from rung.nn.optim import adam, adam_hyper, adam_state, adam_step_
from rung.objectives import (
    clipped_double_q_target,
    deterministic_policy_loss,
    smoothed_target_action,
)
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
    """Adam learning rate of actor and critics."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of each critic."""
    exploration_noise: float = 0.1
    """Std of the Gaussian noise added to actions while collecting, as a fraction of the half-range."""
    policy_delay: int = 2
    """Critic steps per actor (and target-network) step."""
    target_policy_noise: float = 0.2
    """Std of the target-action smoothing noise, as a fraction of the half-range."""
    target_noise_clip: float = 0.5
    """Clip of that noise, as a fraction of the half-range."""

    def validate(self) -> None:
        super().validate()
        positive(self, "policy_delay")
        non_negative(self, "exploration_noise", "target_policy_noise", "target_noise_clip")
        widths(self, "hidden_sizes")


def make_agent(cfg: Config, env, n_critics: int = 2) -> DeterministicAgent:
    if env.discrete:
        raise UserError(f"{cfg.env} has discrete actions; td3 and ddpg need continuous ones (use dqn or ppo)")
    low = torch.as_tensor(env.action_low, dtype=torch.float32).expand(env.action_dim)
    high = torch.as_tensor(env.action_high, dtype=torch.float32).expand(env.action_dim)
    return DeterministicAgent(env.obs_shape[0], env.action_dim, cfg.hidden_sizes, cfg.hidden_sizes, n_critics, low, high,
                              cfg.normalize_obs)


def actor_step(cfg: OffPolicyConfig, agent: DeterministicAgent, actor_opt, o, device: torch.device):
    """The eager actor update of td3 and ddpg, ascending the first critic (as the paper does)."""
    with update_precision(cfg.precision, device):
        pi_q = agent.qf(o, agent.actor(o), detach_params=True)[0]
    pi_loss, pi_stats = deterministic_policy_loss(pi_q)
    actor_opt.zero_grad(set_to_none=True)
    pi_loss.mean().backward()
    actor_opt.step()
    return pi_loss, pi_stats


def make_compiled_update(cfg: OffPolicyConfig, agent: DeterministicAgent, actor_opt, critic_opt, device: torch.device):
    """One gradient step of td3's loop (or ddpg's, called with noise None), compiled whole: the
    critic step, then, where `with_actor`, the actor's against the updated critics. The target
    networks' Polyak step stays with the caller. At Pendulum's sizes on one CPU core an eager step
    is mostly operator and autograd overhead, which one graph removes (as in sac)."""
    from torch.func import functional_call, grad_and_value

    actor_names = [n for n, _ in agent.actor.named_parameters()]
    critic_names = [n for n, _ in agent.qf.named_parameters()]
    scale, bias = agent.actor.scale, agent.actor.bias

    critic_loss = functional_critic_loss(agent.qf, cfg.precision, device)

    def actor_loss(params, o):
        with update_precision(cfg.precision, device):
            # The actor follows the first critic only, as in the eager loop.
            pi_q = agent.qf(o, functional_call(agent.actor, params, (o,)), detach_params=True)[0]
        pi_loss, pi_stats = deterministic_policy_loss(pi_q)
        return pi_loss.mean(), pi_stats

    @torch.no_grad()
    def step(o, o_next, actions, rewards, terminated, noise, critic_state, actor_state, critic_hyper, actor_hyper,
             with_actor: bool):
        with update_precision(cfg.precision, device):
            next_actions = agent.actor_target(o_next)
            if noise is not None:
                next_actions = smoothed_target_action(next_actions, cfg.target_policy_noise * scale * noise,
                                                      cfg.target_noise_clip * scale, bias - scale, bias + scale)
            target = clipped_double_q_target(agent.qf_target(o_next, next_actions), rewards, terminated, cfg.gamma)
        grads, (c_loss, q) = grad_and_value(critic_loss, has_aux=True)(
            {n: p for n, (p, *_) in zip(critic_names, critic_state)}, o, actions, target)
        adam_step_(critic_state, [grads[n] for n in critic_names], *critic_hyper)
        if not with_actor:
            return c_loss, q.mean(), None, {}
        grads, (pi_loss, pi_stats) = grad_and_value(actor_loss, has_aux=True)(
            {n: p for n, (p, *_) in zip(actor_names, actor_state)}, o)
        adam_step_(actor_state, [grads[n] for n in actor_names], *actor_hyper)
        return c_loss, q.mean(), pi_loss, pi_stats

    compiled = compile_update(step)

    def update(b, noise: torch.Tensor | None, with_actor: bool):
        o, o_next = agent.obs_norm(b.obs), agent.obs_norm(b.next_obs)
        # adam_state at each call: a resume's load_state_dict replaces the optimisers' tensors.
        return compiled(o, o_next, b.actions, b.rewards, b.terminated, noise, adam_state(critic_opt),
                        adam_state(actor_opt), adam_hyper(critic_opt), adam_hyper(actor_opt), with_actor)

    return update


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("td3", cfg, resume=resume, force=force)
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
    scale, bias = agent.actor.scale, agent.actor.bias
    fast_update = make_compiled_update(cfg, agent, actor_opt, critic_opt, device) if cfg.compile else None

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
                counters["updates"] += 1
                with_actor = counters["updates"] % cfg.policy_delay == 0
                if fast_update is not None:
                    # The eager branch's draw, made outside the graph (inductor's generator differs).
                    noise = torch.randn_like(b.actions)
                    critic_loss, q_mean, pi_loss, pi_stats = fast_update(b, noise, with_actor)
                else:
                    o, o_next = agent.obs_norm(b.obs), agent.obs_norm(b.next_obs)
                    with torch.no_grad(), update_precision(cfg.precision, device):
                        mu_next = agent.actor_target(o_next)
                        noise = cfg.target_policy_noise * scale * torch.randn_like(mu_next)
                        next_actions = smoothed_target_action(mu_next, noise, cfg.target_noise_clip * scale,
                                                              bias - scale, bias + scale)
                        target = clipped_double_q_target(agent.qf_target(o_next, next_actions), b.rewards,
                                                         b.terminated, cfg.gamma)
                    critic_loss, q_mean = critic_step(agent.qf, critic_opt, o, b.actions, target, cfg.precision, device)
                    if with_actor:
                        pi_loss, pi_stats = actor_step(cfg, agent, actor_opt, o, device)
                stats["losses/critic"], stats["losses/q"] = critic_loss.detach(), q_mean

                if with_actor:
                    polyak_update(agent.qf_target, agent.qf, cfg.tau)
                    polyak_update(agent.actor_target, agent.actor, cfg.tau)
                    stats["losses/actor"] = pi_loss.detach().mean()
                    stats.update({f"losses/{k}": v for k, v in pi_stats.items()})

        if (iteration + 1) % cfg.log_every == 0:
            tally.flush(run, iteration + 1, step, {**stats, "charts/updates": counters["updates"]}, cfg.log_every * cfg.num_envs)
        run.maybe_evaluate(agent, envs, step_before, step)
        run.maybe_checkpoint(iteration + 1, step, modules, envs)
        if run.should_stop:
            break
    return run.finish(agent, envs, iteration + 1, step, modules)
