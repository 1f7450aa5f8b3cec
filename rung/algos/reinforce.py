"""REINFORCE with a learned baseline (Williams 1992; Sutton & Barto ch. 13.4).

Each iteration collects `num_steps` steps in each of `num_envs` envs, computes discounted returns
G, and takes one gradient step on -log pi(a|s) (G - V(s)) plus a value regression toward G.
Deviation from the textbook: rollouts have a fixed length rather than whole episodes, so an
episode cut by the rollout's end or a time limit bootstraps its return from V (its tail is
estimated, not observed); the baseline is a separate critic network.

Run:  rung train reinforce --env CartPole-v1
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from rung.config import RunConfig, in_range, non_negative, positive, widths
from rung.distributed import ddp
from rung.envs.batched import parse_randomize
from rung.envs.make import make_env
from rung.errors import UserError
from rung.nn import make_actor_critic as make_agent
from rung.nn.optim import adam
from rung.objectives import discounted_returns, entropy_loss, normalize, reinforce_loss, value_loss
from rung.rollout import RolloutStorage, collect_rollout
from rung.run import Run, TrainResult


@dataclass
class Config(RunConfig):
    total_timesteps: int = 300_000
    """Environment steps to train for, summed over all envs (and all processes under torchrun)."""
    num_envs: int = 8
    """Parallel environments per process."""
    num_steps: int = 256
    """Steps per environment per rollout (one gradient step per rollout)."""
    learning_rate: float = 2e-3
    """Adam learning rate."""
    anneal_lr: bool = False
    """Decay the learning rate linearly to 0 over training."""
    gamma: float = 0.99
    """Discount factor."""
    norm_adv: bool = True
    """Standardise G - V over the rollout."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Baseline (value) loss weight."""
    value_epochs: int = 5
    """Extra regression steps of the baseline per rollout; the baseline is only as useful as it is fitted."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    normalize_obs: bool = False
    """Standardise observations with running statistics (saved with the policy)."""
    normalize_reward: bool = False
    """Scale rewards by the std of the discounted return."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of policy and baseline."""
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    """Hidden activation."""
    log_std_init: float = 0.0
    """Initial log std of the Gaussian policy (continuous actions)."""

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.num_steps

    def validate(self) -> None:
        super().validate()
        non_negative(self, "ent_coef", "vf_coef")
        positive(self, "num_envs", "num_steps", "learning_rate", "max_grad_norm")
        in_range(self, "gamma", 0.0, 1.0)
        if self.value_epochs < 0:
            raise UserError(f"--value-epochs must be >= 0, got {self.value_epochs}")
        if self.norm_adv and self.batch_size < 2:
            raise UserError("--num-envs 1 --num-steps 1 collects one sample a rollout, whose advantage has no std to "
                            "normalise by; collect at least 2 or pass --norm-adv false")
        widths(self, "hidden_sizes")


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("reinforce", cfg, resume=resume, force=force, multi_process=True)
    device, world = run.device, run.dist.world_size
    envs = make_env(cfg.env, cfg.num_envs, run.env_seed, device=device, randomize=parse_randomize(cfg.randomize),
                    normalize_obs=cfg.normalize_obs, normalize_reward=cfg.normalize_reward, gamma=cfg.gamma,
                    compile=cfg.compile)
    agent = make_agent(cfg, envs).to(device)
    if cfg.compile:
        agent.compile_networks()
    model = ddp.wrap(agent, run.dist)
    opt = adam(agent.parameters(), cfg.learning_rate)
    storage = RolloutStorage(cfg.num_steps, cfg.num_envs, envs.obs_shape, envs.discrete, envs.action_dim, device)
    modules = {"agent": agent, "optimizer": opt}
    steps_per_iter = cfg.batch_size * world
    num_iterations = cfg.total_timesteps // steps_per_iter
    if num_iterations == 0:
        raise UserError(f"--total-timesteps {cfg.total_timesteps} is less than one rollout ({steps_per_iter} steps); raise it")

    obs = envs.reset().to(device)
    start, step = run.restore(modules, envs)
    if start:
        obs = envs.last_obs.to(device)
    iteration = start - 1  # so that a run resumed after its last iteration finishes at once
    for iteration in run.iterations(start, num_iterations):
        lr = cfg.learning_rate * (1.0 - iteration / num_iterations) if cfg.anneal_lr else cfg.learning_rate
        for group in opt.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        obs, ep_returns, ep_lengths = collect_rollout(envs, agent, storage, obs, device)
        with torch.no_grad():
            next_values = storage.next_values(agent.value(obs))
            returns = discounted_returns(storage.rewards, next_values, storage.terminated, storage.truncated, cfg.gamma)
        batch = storage.flatten(returns - storage.values, returns)
        t1 = time.perf_counter()

        logprobs, entropy, values = model(batch.obs, batch.actions)
        adv = normalize(batch.advantages, *ddp.mean_std(batch.advantages)) if cfg.norm_adv else batch.advantages
        pg, _ = reinforce_loss(logprobs, adv)
        vl, _ = value_loss(values, batch.returns)
        ent, stats = entropy_loss(entropy)
        loss = pg.mean() + cfg.vf_coef * vl.mean() + cfg.ent_coef * ent.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
        opt.step()
        for _ in range(cfg.value_epochs):
            # Critic only, outside DDP (which expects every parameter to get a gradient): its
            # gradients are averaged over ranks by hand. The actor's stay None, so Adam skips it.
            vfit, _ = value_loss(agent.value(batch.obs), batch.returns)
            opt.zero_grad(set_to_none=True)
            (cfg.vf_coef * vfit.mean()).backward()
            ddp.all_reduce_grads(agent.critic.parameters())
            torch.nn.utils.clip_grad_norm_(agent.critic.parameters(), cfg.max_grad_norm)
            opt.step()
        ddp.sync_normalizer(envs.normalizer)
        t2 = time.perf_counter()

        step_before, step = step, step + steps_per_iter
        stats.update({"losses/policy": pg.mean().detach(), "losses/value": vl.mean().detach()})
        run.log(iteration + 1, step, {**stats, "charts/learning_rate": lr, "time/rollout": t1 - t0, "time/update": t2 - t1},
                ep_returns, ep_lengths, sps=steps_per_iter / (t2 - t0))
        run.maybe_evaluate(agent, envs, step_before, step)
        run.maybe_checkpoint(iteration + 1, step, modules, envs)
        if run.should_stop:
            break
    return run.finish(agent, envs, iteration + 1, step, modules)
