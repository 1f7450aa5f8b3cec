"""PPO with the clipped surrogate objective (Schulman et al. 2017), discrete and continuous actions.

Deviations from the paper, all standard in the implementations that match published scores
(Huang et al. 2022, "The 37 implementation details of PPO"): separate actor and critic networks,
orthogonal init, advantages normalised per minibatch, global gradient clipping, learning rate
(and optionally the clip range) annealed linearly to zero. Truncated steps bootstrap from
V(final observation) instead of being treated as terminal.

Fine-tuning (--init-from RUN_DIR): the policy starts from a bc run's clone (its critic stays
fresh: bc never trains one) or from a ppo run (actor and critic), with the source's observation
statistics, which then stay frozen. --init-reg-coef adds KL(pi_init || pi) on each minibatch,
exact for categorical and closed form for Gaussian policies, so that the first updates, driven
by a critic that knows nothing yet, do not undo the clone; the weight decays to 0 over
--init-reg-decay-steps env steps.

Run:  rung train ppo --env CartPole-v1
      torchrun --nproc_per_node=2 --no-python rung train ppo --env CartPole-v1   (DDP)
      rung train ppo --env CartPole-v1 --init-from runs/bc --normalize-obs --init-reg-coef 0.1 --init-reg-decay-steps 2e4
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Literal

import torch

from rung.batch import Batch
from rung.config import RunConfig, in_range, non_negative, positive, widths
from rung.distributed import ddp
from rung.envs.batched import parse_randomize
from rung.envs.make import make_env
from rung.errors import UserError
from rung.evaluation import env_normalizes_obs
from rung.init_from import freeze_obs_statistics, load_source, require_same, validate_init_flags
from rung.nn import ActorCritic
from rung.nn import make_actor_critic as make_agent
from rung.nn.actor_critic import actor_widths
from rung.nn.optim import adam
from rung.objectives import (
    decayed_coef,
    entropy_loss,
    gae,
    kl_categorical,
    kl_diag_gaussian,
    normalize,
    ppo_clip_loss,
    value_loss,
)
from rung.rollout import RolloutStorage, collect_rollout
from rung.run import Run, TrainResult


@dataclass
class Config(RunConfig):
    # The defaults are RL Zoo's tuned CartPole-v1 settings: solved well inside 100k steps.
    num_envs: int = 8
    """Parallel environments per process."""
    num_steps: int = 32
    """Steps per environment per rollout."""
    learning_rate: float = 1e-3
    """Adam learning rate (annealed linearly to 0 when anneal_lr)."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over training."""
    gamma: float = 0.98
    """Discount factor."""
    gae_lambda: float = 0.8
    """GAE lambda: 0 is one-step TD, 1 is Monte-Carlo."""
    num_minibatches: int = 1
    """Minibatches per epoch; the rollout (num_envs * num_steps) must divide into them."""
    update_epochs: int = 20
    """Passes over each rollout."""
    norm_adv: bool = True
    """Standardise advantages per minibatch (over all processes under DDP)."""
    clip_coef: float = 0.2
    """Surrogate clipping range epsilon."""
    anneal_clip: bool = True
    """Decay the clipping range linearly to 0 with the learning rate."""
    clip_vloss: bool = False
    """Clip the value loss around the old values with clip_coef (never annealed, unlike the policy's clip)."""
    ent_coef: float = 0.0
    """Entropy bonus weight."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    target_kl: float | None = None
    """Stop the epochs of an update early once approx KL exceeds this."""
    normalize_obs: bool = False
    """Standardise observations with running statistics (saved with the policy)."""
    normalize_reward: bool = False
    """Scale rewards by the std of the discounted return."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden layer widths of actor and critic, e.g. 64,64."""
    actor_hidden_sizes: tuple[int, ...] | None = None
    """The actor's own hidden widths, where they differ from hidden_sizes (which the critic then
    keeps); 0 makes the actor linear: logits straight from the observations."""
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    """Hidden activation."""
    log_std_init: float = 0.0
    """Initial log std of the Gaussian policy (continuous actions)."""
    init_from: str | None = None
    """Run folder to start the policy from: a bc run (its actor; the critic starts fresh) or a ppo
    run (actor and critic). Its observation statistics come along and stay frozen."""
    init_from_checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of --init-from: best (the best evaluation; latest where none ran) or latest."""
    init_reg_coef: float = 0.0
    """Weight of KL(pi_init || pi) on each minibatch, holding the policy near the one --init-from
    gave it (0 disables)."""
    init_reg_decay_steps: int = 0
    """Env steps over which --init-reg-coef falls to 0 (0 keeps it constant)."""
    init_reg_schedule: Literal["linear", "exponential"] = "linear"
    """How it falls: linearly, or exponentially (100-fold, shifted to reach 0 at the end)."""

    @property
    def batch_size(self) -> int:
        """Samples per rollout in one process."""
        return self.num_envs * self.num_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    def validate(self) -> None:
        super().validate()
        non_negative(self, "ent_coef", "vf_coef")
        if self.target_kl is not None:
            positive(self, "target_kl")
        positive(self, "num_envs", "num_steps", "num_minibatches", "update_epochs", "learning_rate", "max_grad_norm")
        in_range(self, "gamma", 0.0, 1.0)
        in_range(self, "gae_lambda", 0.0, 1.0)
        in_range(self, "clip_coef", 0.0, 10.0)
        if self.batch_size % self.num_minibatches:
            raise UserError(f"--num-minibatches {self.num_minibatches} does not divide the rollout of {self.batch_size} samples "
                            f"(num_envs * num_steps); pick a divisor of {self.batch_size}")
        if self.norm_adv and self.minibatch_size < 2:
            raise UserError(f"--num-minibatches {self.num_minibatches} leaves one sample a minibatch, whose advantage "
                            "has no std to normalise by; use fewer minibatches or --norm-adv false")
        widths(self, "hidden_sizes")
        if self.actor_hidden_sizes is not None:
            widths(self, "actor_hidden_sizes", linear_ok=True)
        validate_init_flags(self)


def start_from(cfg: Config, agent: ActorCritic, envs) -> str:
    """Load --init-from's policy into `agent` and its observation statistics into `envs`
    (whose statistics must already be frozen); returns a line for the log."""
    src = load_source(cfg, envs, "ppo", ("bc", "ppo"))
    if src.algo == "bc" and src.cfg.for_algo != "ppo":
        raise UserError(f"--init-from {src.run_dir} is a bc run cloned for {src.cfg.for_algo}, whose actor has another "
                        "shape than ppo's; clone again with --for-algo ppo, or fine-tune it with sac")
    require_same(src, "hidden_sizes", tuple(src.cfg.hidden_sizes), tuple(cfg.hidden_sizes))
    # (0,) is how the flag spells a linear actor.
    require_same(src, "actor_hidden_sizes", actor_widths(src.cfg) or (0,), actor_widths(cfg) or (0,))
    require_same(src, "activation", src.cfg.activation, cfg.activation)
    # The flag rather than silently following the source: config.yaml must say how this run's
    # policy sees observations, or `rung eval` would feed it raw ones.
    require_same(src, "normalize_obs", env_normalizes_obs(src.cfg), cfg.normalize_obs)
    # bc leaves its critic at initialisation; only a ppo run has one worth keeping.
    parts = ("actor_body", "head", "critic") if src.algo == "ppo" else ("actor_body", "head")
    for name in parts:
        getattr(agent, name).load_state_dict(getattr(src.agent, name).state_dict())
    if cfg.normalize_obs:
        envs.normalizer.obs_rms.load_state_dict(src.normalizer["obs_rms"])
    if cfg.normalize_reward and src.algo == "ppo" and src.cfg.normalize_reward:
        # The critic kept from the source predicts returns on the source's reward scale.
        envs.normalizer.ret_rms.load_state_dict(src.normalizer["ret_rms"])
    return (f"started from the {src.algo} run {src.run_dir} ({src.checkpoint}.pt, step {src.step:,}): "
            f"{', '.join(parts)}{' and observation statistics' if cfg.normalize_obs else ''}")


def ppo_loss(agent: torch.nn.Module, mb: Batch, cfg: Config, clip_coef: float, init_policy: ActorCritic | None = None,
             reg_coef: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The PPO objective on one minibatch, plus reg_coef * KL(pi_init || pi) when reg_coef > 0.
    `agent` may be DDP-wrapped (its forward is evaluate). Advantages are standardised with the
    global minibatch's statistics, so that N ranks on shards produce the gradient of one process
    on the concatenated minibatch."""
    logprobs, entropy, values = agent(mb.obs, mb.actions)
    adv = mb.advantages
    if cfg.norm_adv:
        adv = normalize(adv, *ddp.mean_std(adv))
    pg, stats = ppo_clip_loss(logprobs, mb.logprobs, adv, clip_coef)
    # The value clip is in return units and is not annealed: shrunk with the policy's clip toward
    # the end of training, it would freeze the critic (CleanRL's and SB3's clip_range_vf do not
    # decay either).
    vl, _ = value_loss(values, mb.returns, mb.values, cfg.clip_coef if cfg.clip_vloss else None)
    ent, ent_stats = entropy_loss(entropy)
    pg_mean, vl_mean = pg.mean(), vl.mean()
    loss = pg_mean + cfg.vf_coef * vl_mean
    if cfg.ent_coef:
        # At 0 the term adds nothing to the gradient, only a branch of graph to every backward.
        loss = loss + cfg.ent_coef * ent.mean()
    stats = {"policy": pg_mean.detach(), "value": vl_mean.detach(), **ent_stats, **stats}
    if reg_coef > 0:
        # A second pass of the actor: evaluate returns log-probs of the taken actions only, and
        # the exact KL needs the whole distribution. Outside DDP's forward is fine: autograd sums
        # both paths into one gradient per parameter before DDP's accumulation hooks fire.
        net = getattr(agent, "module", agent)
        with torch.no_grad():
            ref = init_policy.dist_params(mb.obs)
        params = net.dist_params(mb.obs)
        kl, _ = kl_categorical(ref, params) if net.discrete else kl_diag_gaussian(*ref, *params)
        loss = loss + reg_coef * kl.mean()
        stats["init_reg"] = kl.mean().detach()
    return loss, {f"losses/{k}": v for k, v in stats.items()}


def kl_exceeded(approx_kl: torch.Tensor, target_kl: float | None) -> bool:
    """Whether to stop an update's epochs early: on the approx KL averaged over processes, so that
    every rank stops at the same epoch (one that stopped alone would wait in another collective)."""
    return target_kl is not None and bool(ddp.mean_over_ranks(torch.as_tensor(approx_kl)) > target_kl)


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("ppo", cfg, resume=resume, force=force, multi_process=True)
    device, world = run.device, run.dist.world_size
    envs = make_env(cfg.env, cfg.num_envs, run.env_seed, device=device, randomize=parse_randomize(cfg.randomize),
                    normalize_obs=cfg.normalize_obs, normalize_reward=cfg.normalize_reward, gamma=cfg.gamma,
                    compile=cfg.compile)
    agent = make_agent(cfg, envs).to(device)
    if cfg.init_from:
        if cfg.normalize_obs:
            # Frozen, because the clone's weights are a function of these statistics: moving them
            # changes what the loaded policy does, and what pi_init means to the regulariser
            # (it sees the same normalised inputs). Reward scaling, if on, keeps adapting.
            freeze_obs_statistics(envs)
        if run.ckpt is None:  # a resumed run finds weights, statistics and pi_init in its checkpoint
            run.logger.info(start_from(cfg, agent, envs))
    # pi_init is taken after loading and never trained; in the checkpoint, so a resume needs no source.
    init_policy = copy.deepcopy(agent).requires_grad_(False) if cfg.init_reg_coef > 0 else None
    if cfg.compile:
        agent.compile_networks()
    model = ddp.wrap(agent, run.dist)
    opt = adam(agent.parameters(), cfg.learning_rate, eps=1e-5)
    storage = RolloutStorage(cfg.num_steps, cfg.num_envs, envs.obs_shape, envs.discrete, envs.action_dim, device)
    modules = {"agent": agent, "optimizer": opt}
    if init_policy is not None:
        modules["init_policy"] = init_policy
    steps_per_iter = cfg.batch_size * world
    num_iterations = cfg.total_timesteps // steps_per_iter
    if num_iterations == 0:
        raise UserError(f"--total-timesteps {cfg.total_timesteps} is less than one rollout ({steps_per_iter} steps); raise it")

    obs = envs.reset().to(device)
    start, step = run.restore(modules, envs)
    if start:
        obs = envs.last_obs.to(device)  # restored mid-episode: continue from the last observation
    iteration = start - 1  # so that a run resumed after its last iteration finishes at once
    for iteration in run.iterations(start, num_iterations):
        frac = 1.0 - iteration / num_iterations
        lr = cfg.learning_rate * frac if cfg.anneal_lr else cfg.learning_rate
        clip = cfg.clip_coef * frac if cfg.anneal_clip else cfg.clip_coef
        for group in opt.param_groups:
            group["lr"] = lr

        t0 = time.perf_counter()
        obs, ep_returns, ep_lengths = collect_rollout(envs, agent, storage, obs, device)
        with torch.no_grad():
            next_values = storage.next_values(agent.value(obs))
            advantages, returns = gae(storage.rewards, storage.values, next_values, storage.terminated,
                                      storage.truncated, cfg.gamma, cfg.gae_lambda)
        batch = storage.flatten(advantages, returns)
        t1 = time.perf_counter()
        # At the env steps collected so far, the step this iteration logs at.
        reg_coef = decayed_coef(cfg.init_reg_coef, step + steps_per_iter, cfg.init_reg_decay_steps,
                                cfg.init_reg_schedule)

        for _ in range(cfg.update_epochs):
            perm = torch.randperm(cfg.batch_size, device=device)
            for mb_idx in perm.split(cfg.minibatch_size):
                loss, stats = ppo_loss(model, batch.index(mb_idx), cfg, clip, init_policy, reg_coef)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
                opt.step()
            if kl_exceeded(stats["losses/approx_kl"], cfg.target_kl):
                break
        ddp.sync_normalizer(envs.normalizer)
        t2 = time.perf_counter()

        step_before, step = step, step + steps_per_iter
        with torch.no_grad():
            var_y = returns.var()
            stats["losses/explained_variance"] = 1 - (returns - batch.values.view_as(returns)).var() / var_y if var_y > 0 else torch.nan
        if init_policy is not None:
            stats["charts/init_reg_coef"] = reg_coef
        run.log(iteration + 1, step, {**stats, "charts/learning_rate": lr, "time/rollout": t1 - t0, "time/update": t2 - t1},
                ep_returns, ep_lengths, sps=steps_per_iter / (t2 - t0))
        run.maybe_evaluate(agent, envs, step_before, step)
        run.maybe_checkpoint(iteration + 1, step, modules, envs)
        if run.should_stop:
            break
    return run.finish(agent, envs, iteration + 1, step, modules)
