"""TD3+BC (Fujimoto & Gu 2021): offline RL from a dataset, continuous actions.

TD3 learning from a fixed dataset, with one change: the actor's loss adds a behaviour-cloning
term, -lambda * Q(s, pi(s)) + (pi(s) - a)^2 with lambda = alpha / mean|Q| (rung.objectives.
td3_bc_actor_loss), which keeps the policy near the data, where the critics are trained and
their estimates can be trusted. Observations are standardised with the dataset's statistics.
Chosen as rung's first offline-RL method over IQL and CQL because it is the smallest change to
an algorithm rung already has (one loss term, one normalisation), adds two hyperparameters
(alpha and the normalisation) that hold across the D4RL locomotion tasks, and is on par with CQL
there at a fraction of its run time; IQL, about level on locomotion, is much stronger on
sparse-reward AntMaze data and is a later addition of its own.

The env is never stepped except to evaluate, and evaluations only measure: best.pt is the final
policy, not the best-evaluated one. An iteration is one critic update (log_every,
checkpoint_every count them), and `total_timesteps`, eval_every and the step axis of
metrics.jsonl count gradient steps, as the paper's "time steps" do offline.

Deviations from the authors' code: the critic loss is half the summed per-critic MSE (the scale
of rung's TD3; Adam makes the factor immaterial), and standardised observations divide by
sqrt(var + 1e-8) and are clipped at 10 std rather than dividing by std + 1e-3 (rung's
normaliser, which evaluation and PPO share). As with D4RL's loader, only `terminated` stops
bootstrapping; a step cut by a time limit bootstraps from the observation it was cut at.

Run:  rung collect --env Pendulum-v1 --policy expert --episodes 50 -o pendulum.npz
      rung train td3_bc --env Pendulum-v1 --dataset pendulum.npz
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rung.buffers.offline import fit_obs_normalizer, load_dataset, normalized_obs
from rung.buffers.replay import Transitions
from rung.config import RunConfig, in_range, learns_from_a_dataset, non_negative, positive, widths
from rung.envs.make import make_env
from rung.errors import UserError
from rung.nn.offpolicy import DeterministicAgent, critic_step, polyak_update
from rung.nn.optim import adam
from rung.objectives import clipped_double_q_target, smoothed_target_action, td3_bc_actor_loss
from rung.run import Run, TrainResult, write_json_atomic


@dataclass
class Config(RunConfig):
    env: str = "Pendulum-v1"
    """Gymnasium id of the env the dataset was recorded in (continuous actions); evaluation runs there."""
    dataset: str | None = None
    """Recorded transitions: a .npz from 'rung collect', a D4RL-layout .hdf5 or a Minari dataset folder (required)."""
    total_timesteps: int = 100_000
    """Gradient steps (critic updates) to train for; no env steps are taken. The paper runs 1M on D4RL."""
    alpha: float = 2.5
    """Weight of the Q term against behaviour cloning: lambda = alpha / mean|Q| (0 is pure cloning)."""
    batch_size: int = 256
    """Transitions per gradient step, drawn uniformly from the dataset."""
    learning_rate: float = 3e-4
    """Adam learning rate of actor and critics."""
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden widths of the actor and of each critic."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak rate of the target networks."""
    policy_delay: int = 2
    """Critic steps per actor (and target-network) step."""
    target_policy_noise: float = 0.2
    """Std of the target-action smoothing noise, as a fraction of the half-range."""
    target_noise_clip: float = 0.5
    """Clip of that noise, as a fraction of the half-range."""
    normalize_obs: bool = True
    """Standardise observations with the dataset's mean and std (frozen, saved with the policy), as the paper does."""
    eval_every: int = 5_000
    """Evaluate the deterministic policy in the env every this many gradient steps (0 disables)."""
    log_every: int = 1_000
    """Write a metrics line every this many gradient steps."""
    checkpoint_every: int = 10_000
    """Write checkpoints/latest.pt every this many gradient steps (and always at the end)."""

    def validate(self) -> None:
        super().validate()
        if not self.dataset:
            raise UserError(f"td3_bc learns from recorded episodes; pass --dataset FILE (record one with: "
                            f"rung collect --env {self.env} --policy expert --episodes 50 -o data.npz)")
        if not Path(self.dataset).exists():
            raise UserError(f"--dataset {self.dataset}: no such file or folder; check the path")
        learns_from_a_dataset(self, "td3_bc")
        positive(self, "batch_size", "learning_rate", "policy_delay")
        non_negative(self, "alpha", "target_policy_noise", "target_noise_clip")
        in_range(self, "gamma", 0.0, 1.0)
        in_range(self, "tau", 0.0, 1.0)
        if self.tau == 0:
            raise UserError("--tau 0 would freeze the target networks; use a value in (0, 1]")
        widths(self, "hidden_sizes")


def make_agent(cfg: Config, env) -> DeterministicAgent:
    if env.discrete:
        raise UserError(f"td3_bc needs continuous actions and {cfg.env} has discrete ones; use bc")
    low = torch.as_tensor(env.action_low, dtype=torch.float32).expand(env.action_dim)
    high = torch.as_tensor(env.action_high, dtype=torch.float32).expand(env.action_dim)
    # No ObsNorm in the agent: the env's frozen normaliser standardises (rung.buffers.offline).
    return DeterministicAgent(env.obs_shape[0], env.action_dim, cfg.hidden_sizes, cfg.hidden_sizes, 2, low, high)


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    # best.pt is the final policy, as the paper reports it: picking the best of the env
    # evaluations would select with the online interaction offline RL assumes it does not have
    # (and anything loading best.pt, --init-from or collect, would inherit that choice).
    run = Run("td3_bc", cfg, resume=resume, force=force, best_by_eval=False)
    device = run.device
    # Never stepped for training: it holds the observation statistics and tells Run how to
    # build the evaluation env.
    envs = make_env(cfg.env, 1, run.env_seed, device=device, normalize_obs=cfg.normalize_obs)
    agent = make_agent(cfg, envs).to(device)
    data = load_dataset(cfg.dataset, envs, cfg.env, "td3_bc", run.logger.info)
    fit_obs_normalizer(envs, data.observations)
    # The whole dataset as one batch of N transitions; minibatches index into it.
    dataset = Transitions(obs=normalized_obs(envs, data.observations, device),
                          actions=torch.as_tensor(data.actions, device=device),
                          rewards=torch.as_tensor(data.rewards, device=device),
                          next_obs=normalized_obs(envs, data.next_observations, device),
                          terminated=torch.as_tensor(data.terminated, dtype=torch.float32, device=device))
    n = len(data)
    actor_opt = adam(agent.actor.parameters(), cfg.learning_rate)
    critic_opt = adam(agent.qf.parameters(), cfg.learning_rate)
    modules = {"agent": agent, "actor_opt": actor_opt, "critic_opt": critic_opt}
    scale, bias = agent.actor.scale, agent.actor.bias

    start, step = run.restore(modules, envs)
    if start == 0:
        run.logger.info(f"{data.num_episodes} episodes ({n:,} transitions, mean return {data.mean_return:.2f})")
        run.logger.log(0, 0.0, {"dataset/mean_return": data.mean_return, "dataset/episodes": data.num_episodes,
                                "dataset/steps": n})
    stats: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    iteration = start - 1
    for iteration in run.iterations(start, cfg.total_timesteps):
        # Drawn on the CPU generator, whose state checkpoints carry.
        idx = torch.randint(n, (cfg.batch_size,)).to(device)
        o, a, o_next = dataset.obs[idx], dataset.actions[idx], dataset.next_obs[idx]
        with torch.no_grad():
            mu_next = agent.actor_target(o_next)
            noise = cfg.target_policy_noise * scale * torch.randn_like(mu_next)
            next_actions = smoothed_target_action(mu_next, noise, cfg.target_noise_clip * scale, bias - scale, bias + scale)
            target = clipped_double_q_target(agent.qf_target(o_next, next_actions), dataset.rewards[idx],
                                             dataset.terminated[idx], cfg.gamma)
        critic_loss, q_mean = critic_step(agent.qf, critic_opt, o, a, target, "float32", device)
        stats["losses/critic"], stats["losses/q"] = critic_loss.detach(), q_mean

        if (iteration + 1) % cfg.policy_delay == 0:
            pi = agent.actor(o)
            # The actor follows the first critic only, as in TD3 and the authors' code.
            pi_loss, pi_stats = td3_bc_actor_loss(agent.qf(o, pi, detach_params=True)[0], pi, a, cfg.alpha)
            actor_opt.zero_grad(set_to_none=True)
            pi_loss.mean().backward()
            actor_opt.step()
            polyak_update(agent.qf_target, agent.qf, cfg.tau)
            polyak_update(agent.actor_target, agent.actor, cfg.tau)
            stats["losses/actor"] = pi_loss.detach().mean()
            stats.update({f"losses/{k}": v for k, v in pi_stats.items()})

        step_before, step = step, step + 1
        if (iteration + 1) % cfg.log_every == 0:
            now = time.perf_counter()
            run.log(iteration + 1, step, {k: float(v) for k, v in stats.items()}, [], [],
                    sps=cfg.log_every / (now - t0))
            t0 = now
        run.maybe_evaluate(agent, envs, step_before, step)
        run.maybe_checkpoint(iteration + 1, step, modules, envs)
        if run.should_stop:
            break

    result = run.finish(agent, envs, iteration + 1, step, modules)
    if result.summary:
        result.summary.update({"step_unit": "gradient steps", "dataset": str(cfg.dataset),
                               "dataset_episodes": data.num_episodes, "dataset_mean_return": data.mean_return})
        write_json_atomic(result.run_dir / "summary.json", result.summary)
    return result
