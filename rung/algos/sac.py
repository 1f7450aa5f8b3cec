"""Soft Actor-Critic (Haarnoja et al. 2018) with automatic entropy tuning, continuous actions.

As in the authors' second paper and Stable-Baselines3: two critics with Polyak-averaged targets,
no separate value network, a tanh-squashed Gaussian actor, and the temperature alpha learned to
hold the policy's entropy near -action_dim. Goal-conditioned envs (Fetch*) add --her.

Fine-tuning (--init-from RUN_DIR) starts from a sac run (actor, critics, their targets, the
observation statistics and, with --autotune, the temperature) or from a bc run cloned with
--for-algo sac (its actor and observation statistics; the critics start fresh and the
temperature at --init-alpha). A bc run cloned for ppo is refused: its Gaussian is unsquashed, on
a tanh-activated body with a state-independent std, and no copy of weights turns it into this
tanh-squashed actor (experts' actions sit at the bounds, where atanh is infinite).
--init-reg-coef adds a behaviour-cloning term to the actor loss: the squared distance
between the current and the initial policy's deterministic actions, both in the squashed [-1, 1]
space so that the weight means the same for every action range.

--compile runs each gradient step as one torch.compile'd graph: gradients through torch.func
instead of three backward passes, and Adam written out elementwise so that it fuses with them (on
the optimisers' own state, so checkpoints are the same either way). The maths and the random
draws are eager's; the first steps pay the compile time.

Run:  rung train sac --env Pendulum-v1
      rung train sac --env FetchReach-v4 --her
      rung train sac --env Pendulum-v1 --init-from runs/sac-run --init-reg-coef 1 --init-reg-decay-steps 10000
      rung train bc --env FetchReach-v4 --dataset demos.npz --for-algo sac --hidden-sizes 256,256 --run-dir runs/clone
      rung train sac --env FetchReach-v4 --her --normalize-obs --init-from runs/clone --init-reg-coef 1
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from rung.buffers.replay import fill_before_updates, make_buffer
from rung.config import OffPolicyConfig, positive, widths
from rung.envs.batched import parse_randomize
from rung.envs.make import make_env
from rung.errors import UserError
from rung.init_from import load_source, require_same, validate_init_flags
from rung.nn.offpolicy import (
    SACAgent,
    SquashedGaussianActor,
    compile_update,
    critic_step,
    functional_critic_loss,
    polyak_update,
    update_precision,
)
from rung.nn.optim import adam, adam_hyper, adam_state, adam_step_
from rung.objectives import (
    bc_mse_loss,
    decayed_coef,
    sac_policy_loss,
    soft_q_target,
    temperature_loss,
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
    """Adam learning rate of actor, critics and temperature."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of each critic."""
    n_critics: int = 2
    """Critics whose minimum forms the target."""
    init_alpha: float = 1.0
    """Initial entropy temperature."""
    autotune: bool = True
    """Learn alpha toward the target entropy -action_dim; otherwise keep init_alpha."""
    target_update_interval: int = 1
    """Gradient steps between target-network updates."""
    init_from: str | None = None
    """A run folder to start from: a sac run (actor, critics, observation statistics and, with
    autotune, the temperature; without it init_alpha holds) or a bc run cloned with --for-algo sac
    (actor and observation statistics)."""
    init_from_checkpoint: Literal["best", "latest"] = "best"
    """Which checkpoint of --init-from: best (the best evaluation; latest where none ran) or latest."""
    init_reg_coef: float = 0.0
    """Weight of the squared distance between the policy's and the initial policy's deterministic
    actions (in [-1, 1]) in the actor loss, holding it near where --init-from started it (0 disables)."""
    init_reg_decay_steps: int = 0
    """Env steps over which --init-reg-coef falls to 0 (0 keeps it constant)."""
    init_reg_schedule: Literal["linear", "exponential"] = "linear"
    """How it falls: linearly, or exponentially (100-fold, shifted to reach 0 at the end)."""

    def validate(self) -> None:
        super().validate()
        positive(self, "n_critics", "init_alpha", "target_update_interval")
        widths(self, "hidden_sizes")
        validate_init_flags(self)


def make_agent(cfg: Config, env) -> SACAgent:
    if env.discrete:
        raise UserError(f"sac needs continuous actions and {cfg.env} has discrete ones; use dqn or ppo")
    low = torch.as_tensor(env.action_low, dtype=torch.float32).expand(env.action_dim)
    high = torch.as_tensor(env.action_high, dtype=torch.float32).expand(env.action_dim)
    return SACAgent(env.obs_shape[0], env.action_dim, cfg.hidden_sizes, cfg.hidden_sizes, cfg.n_critics, low, high,
                    cfg.init_alpha, cfg.normalize_obs)


def start_from(cfg: Config, agent: SACAgent, envs) -> str:
    """Load --init-from's agent into `agent`; returns a line for the log."""
    src = load_source(cfg, envs, "sac", ("sac", "bc"))
    if src.algo == "bc" and src.cfg.for_algo != "sac":
        raise UserError(f"--init-from {src.run_dir} is a bc run cloned for {src.cfg.for_algo}, whose unsquashed Gaussian "
                        "does not map onto sac's tanh-squashed actor; clone again with --for-algo sac, or fine-tune it with ppo")
    require_same(src, "hidden_sizes", tuple(src.cfg.hidden_sizes), tuple(cfg.hidden_sizes))
    require_same(src, "normalize_obs", src.cfg.normalize_obs, cfg.normalize_obs)
    stats = ", observation statistics" if cfg.normalize_obs else ""
    if src.algo == "bc":
        # bc trained the actor alone: its critics and temperature are initialisation, no better
        # than this run's own (whose n_critics and init_alpha are the user's choice).
        agent.actor.load_state_dict(src.agent.actor.state_dict())
        agent.obs_norm.load_state_dict(src.agent.obs_norm.state_dict())
        return (f"started from the bc run {src.run_dir} ({src.checkpoint}.pt): actor{stats}; "
                f"critics fresh, temperature {cfg.init_alpha:g}")
    require_same(src, "n_critics", src.cfg.n_critics, cfg.n_critics)
    state = src.agent.state_dict()
    if not cfg.autotune:
        # A fixed temperature is the user's choice; a tuned one starts where the source left it,
        # since init_alpha (1.0 by default) would swamp a trained policy's Q in entropy bonus.
        state["log_alpha"] = agent.log_alpha.detach().clone()
    agent.load_state_dict(state)
    return (f"started from the sac run {src.run_dir} ({src.checkpoint}.pt, step {src.step:,}): actor, critics"
            f"{stats}{' and temperature' if cfg.autotune else ''}")


def unit_action(actor: SquashedGaussianActor, obs: torch.Tensor, params: dict | None = None) -> torch.Tensor:
    """The deterministic action tanh(mean(s)) in [-1, 1], before scaling to the env's box; with
    `params`, of the actor with those weights (torch.func.functional_call)."""
    if params is None:
        action = actor(obs, deterministic=True)[0]
    else:
        action = torch.func.functional_call(actor, params, (obs,), {"deterministic": True})[0]
    return (action - actor.bias) / actor.scale


def make_compiled_update(cfg: Config, agent: SACAgent, actor_opt, critic_opt, alpha_opt, target_entropy: float,
                    device: torch.device, init_policy: nn.ModuleDict | None):
    """A function doing one gradient step of the loop in train() (the same losses, order and
    noise), compiled whole: at Pendulum's sizes on one CPU core the eager step is mostly the
    overhead of some 800 operator calls and three autograd passes, which one graph removes."""
    from torch.func import functional_call, grad, grad_and_value

    actor_names = [n for n, _ in agent.actor.named_parameters()]
    critic_names = [n for n, _ in agent.qf.named_parameters()]

    critic_loss = functional_critic_loss(agent.qf, cfg.precision, device)

    def actor_loss(params, o, noise, alpha, ref_action, reg_coef):
        with update_precision(cfg.precision, device):
            pi_actions, logp = functional_call(agent.actor, params, (o,), {"noise": noise})
            min_q = agent.qf(o, pi_actions, detach_params=True).min(0).values
        pi_loss, pi_stats = sac_policy_loss(min_q, logp, alpha)
        loss = pi_loss.mean()
        if ref_action is not None:
            reg, _ = bc_mse_loss(unit_action(agent.actor, o, params), ref_action)
            loss = loss + reg_coef * reg.mean()
            pi_stats["init_reg"] = reg.mean()
        return loss, (pi_loss.mean(), logp, pi_stats)

    @torch.no_grad()
    def step(o, o_next, actions, rewards, terminated, noise, next_noise, ref_action, reg_coef,
             critic_state, actor_state, alpha_state, critic_hyper, actor_hyper, alpha_hyper):
        alpha = agent.log_alpha.exp()
        with update_precision(cfg.precision, device):
            next_actions, next_logp = agent.actor(o_next, noise=next_noise)
            target = soft_q_target(agent.qf_target(o_next, next_actions), next_logp, alpha, rewards, terminated,
                                   cfg.gamma)
        grads, (c_loss, q) = grad_and_value(critic_loss, has_aux=True)(
            {n: p for n, (p, *_) in zip(critic_names, critic_state)}, o, actions, target)
        adam_step_(critic_state, [grads[n] for n in critic_names], *critic_hyper)
        grads, (pi_loss, logp, pi_stats) = grad(actor_loss, has_aux=True)(
            {n: p for n, (p, *_) in zip(actor_names, actor_state)}, o, noise, alpha, ref_action, reg_coef)
        adam_step_(actor_state, [grads[n] for n in actor_names], *actor_hyper)
        if alpha_state is not None:
            # d/d log_alpha of temperature_loss's mean, written out: log-probs are constants there.
            adam_step_(alpha_state, [-(logp + target_entropy).mean().reshape(agent.log_alpha.shape)], *alpha_hyper)
        return c_loss, q.mean(), pi_loss, alpha, pi_stats

    compiled = compile_update(step)

    def update(b, reg_coef: float):
        # The noise is drawn here, in the eager loop's order, so the run samples what it would
        # uncompiled (inductor's own generator draws other numbers).
        noise, next_noise = torch.randn_like(b.actions), torch.randn_like(b.actions)
        o, o_next = agent.obs_norm(b.obs), agent.obs_norm(b.next_obs)
        # As in the eager loop, no behaviour-cloning term once its weight is 0 (the graph for that
        # case compiles once, when a decaying weight reaches it).
        ref_action = coef = None
        if reg_coef > 0:
            with torch.no_grad():
                ref_action = unit_action(init_policy.actor, init_policy.obs_norm(b.obs))
            coef = torch.tensor(reg_coef, device=device)
        return compiled(o, o_next, b.actions, b.rewards, b.terminated, noise, next_noise, ref_action, coef,
                        adam_state(critic_opt), adam_state(actor_opt),
                        adam_state(alpha_opt) if cfg.autotune else None, adam_hyper(critic_opt), adam_hyper(actor_opt),
                        adam_hyper(alpha_opt))

    return update


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    run = Run("sac", cfg, resume=resume, force=force)
    device = run.device
    envs = make_env(cfg.env, cfg.num_envs, run.env_seed, device=device, randomize=parse_randomize(cfg.randomize))
    agent = make_agent(cfg, envs).to(device)
    if cfg.init_from and run.ckpt is None:  # a resumed run finds both agents in its checkpoint
        run.logger.info(start_from(cfg, agent, envs))
    # The initial policy with its own copy of the observation statistics: the agent's keep
    # updating (the replay buffer holds raw observations), while this one is a fixed function of
    # the raw observation, as the policy was when loaded.
    init_policy = (nn.ModuleDict({"obs_norm": copy.deepcopy(agent.obs_norm), "actor": copy.deepcopy(agent.actor)})
                   .requires_grad_(False) if cfg.init_reg_coef > 0 else None)
    actor_opt = adam(agent.actor.parameters(), cfg.learning_rate)
    critic_opt = adam(agent.qf.parameters(), cfg.learning_rate)
    alpha_opt = adam([agent.log_alpha], cfg.learning_rate)
    target_entropy = -float(envs.action_dim)
    buffer = make_buffer(cfg, envs, device, cfg.seed, log=run.logger.info)
    modules = {"agent": agent, "actor_opt": actor_opt, "critic_opt": critic_opt, "alpha_opt": alpha_opt}
    counters = Counters(updates=0)
    modules["counters"] = counters
    if init_policy is not None:
        modules["init_policy"] = init_policy
    if cfg.save_buffer:
        modules["buffer"] = buffer
    num_iterations = cfg.total_timesteps // cfg.num_envs
    fast_update = (make_compiled_update(cfg, agent, actor_opt, critic_opt, alpha_opt, target_entropy, device,
                                        init_policy) if cfg.compile else None)

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
            with torch.no_grad():
                actions, _ = agent.actor(agent.obs_norm(obs))
        obs = step_into_buffer(envs, obs, actions, buffer, tally.episodes, tally.successes).to(device)
        agent.obs_norm.update(obs)
        step_before, step = step, step + cfg.num_envs

        if step >= cfg.learning_starts and iteration % cfg.train_freq == 0 and len(buffer) >= min_fill:
            reg_coef = decayed_coef(cfg.init_reg_coef, step, cfg.init_reg_decay_steps, cfg.init_reg_schedule)
            for _ in range(cfg.gradient_steps):
                b = buffer.sample(cfg.batch_size)
                if fast_update is not None:
                    critic_loss, q_mean, pi_loss, alpha, pi_stats = fast_update(b, reg_coef)
                else:
                    o, o_next = agent.obs_norm(b.obs), agent.obs_norm(b.next_obs)
                    # Temperature first, from the current policy's log-probs (the order of SB3 and
                    # of the authors' code), then the critics with the alpha that held before it.
                    with update_precision(cfg.precision, device):
                        pi_actions, logp = agent.actor(o)
                    alpha = agent.log_alpha.detach().exp()
                    if cfg.autotune:
                        a_loss, _ = temperature_loss(agent.log_alpha, logp, target_entropy)
                        alpha_opt.zero_grad(set_to_none=True)
                        a_loss.mean().backward()
                        alpha_opt.step()

                    with torch.no_grad(), update_precision(cfg.precision, device):
                        next_actions, next_logp = agent.actor(o_next)
                        target = soft_q_target(agent.qf_target(o_next, next_actions), next_logp, alpha,
                                               b.rewards, b.terminated, cfg.gamma)
                    critic_loss, q_mean = critic_step(agent.qf, critic_opt, o, b.actions, target, cfg.precision,
                                                      device)

                    with update_precision(cfg.precision, device):
                        min_q = agent.qf(o, pi_actions, detach_params=True).min(0).values
                    pi_loss, pi_stats = sac_policy_loss(min_q, logp, alpha)
                    actor_loss = pi_loss.mean()
                    if reg_coef > 0:
                        with torch.no_grad():
                            ref_action = unit_action(init_policy.actor, init_policy.obs_norm(b.obs))
                        reg, _ = bc_mse_loss(unit_action(agent.actor, o), ref_action)
                        actor_loss = actor_loss + reg_coef * reg.mean()
                        pi_stats["init_reg"] = reg.detach().mean()
                    actor_opt.zero_grad(set_to_none=True)
                    actor_loss.backward()
                    actor_opt.step()

                counters["updates"] += 1
                if counters["updates"] % cfg.target_update_interval == 0:
                    polyak_update(agent.qf_target, agent.qf, cfg.tau)
            stats = {"losses/critic": critic_loss.detach(), "losses/actor": pi_loss.detach().mean(),
                     "losses/q": q_mean, "losses/alpha": alpha, **{f"losses/{k}": v for k, v in pi_stats.items()}}
            if init_policy is not None:
                stats["charts/init_reg_coef"] = torch.tensor(reg_coef)

        if (iteration + 1) % cfg.log_every == 0:
            tally.flush(run, iteration + 1, step, {**stats, "charts/updates": counters["updates"]}, cfg.log_every * cfg.num_envs)
        run.maybe_evaluate(agent, envs, step_before, step)
        run.maybe_checkpoint(iteration + 1, step, modules, envs)
        if run.should_stop:
            break
    return run.finish(agent, envs, iteration + 1, step, modules)
