"""Behaviour cloning: supervised learning of the recorded actions, discrete and continuous.

The clone is the network of the algorithm that will fine-tune it, so that it starts that
algorithm as it is (the offline-then-online pipeline this algorithm is here for):

- `--for-algo ppo` (the default): PPO's rung.nn.ActorCritic (the same class, state_dict keys and
  hidden_sizes/activation flags). Only the actor (body and head) is trained; the critic stays at
  its initialisation, for PPO to fit. Discrete actions use cross-entropy; continuous ones fit the
  Gaussian head's mean, and with --loss nll its state-independent log std too.
- `--for-algo sac`: SAC's agent (continuous actions). Only its tanh-squashed actor is trained,
  and only by squared error of the deterministic action tanh(mean) against the recorded action,
  both in [-1, 1]: scripted experts push actions onto the bounds (the Pendulum expert saturates
  at +-2), where the squashed Gaussian's log-likelihood is infinite. Its log std and the critics
  stay at their initialisation, for SAC to fit.

Observations are standardised with the training split's mean and std, computed once. For PPO
the statistics live in the env's frozen normaliser, where PPO keeps them; for SAC in the agent's
own input normaliser (`obs_norm`), where SAC keeps them. Either way they travel in every
checkpoint (see rung.buffers.offline).

Counting: an iteration is one epoch (log_every and checkpoint_every count epochs); the step
axis of metrics.jsonl, eval_every and summary.json's total_timesteps count gradient steps, since
no env steps are taken. Validation splits off whole episodes; the run ends with the weights of
the lowest validation loss, and stops once it has not improved for `patience` epochs.
summary.json adds the dataset's mean return, for comparing the clone with its demonstrator.

Run:  rung collect --env CartPole-v1 --policy expert --episodes 20 -o demos.npz
      rung train bc --env CartPole-v1 --dataset demos.npz
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from rung.buffers.offline import fit_obs_normalizer, load_dataset, normalized_obs
from rung.config import RunConfig, learns_from_a_dataset, non_negative, positive, widths
from rung.envs.make import make_env
from rung.errors import UserError
from rung.algos import sac
from rung.evaluation import env_normalizes_obs
from rung.nn import ActorCritic, make_actor_critic
from rung.nn.offpolicy import SACAgent
from rung.nn.optim import adam
from rung.objectives import bc_discrete_loss, bc_gaussian_nll_loss, bc_mse_loss
from rung.run import Run, TrainResult, write_json_atomic

# Validation runs in chunks of this many samples, so a D4RL-sized split does not need one
# activation tensor of its whole size.
EVAL_CHUNK = 65_536


@dataclass
class Config(RunConfig):
    env: str = "CartPole-v1"
    """Gymnasium id the dataset was recorded in; the clone is evaluated there."""
    dataset: str | None = None
    """Recorded episodes: a .npz from 'rung collect', a D4RL-layout .hdf5 or a Minari dataset folder (required)."""
    total_timesteps: int = 100_000
    """Unused by bc, which trains for --epochs; its step counter is gradient steps."""
    epochs: int = 200
    """Passes over the training split (fewer where early stopping ends the run)."""
    batch_size: int = 256
    """Samples per gradient step."""
    learning_rate: float = 1e-3
    """Adam learning rate."""
    hidden_sizes: tuple[int, ...] = (64, 64)
    """Hidden widths of the policy (and of the untrained critic); PPO's default, so the clone starts PPO as is."""
    activation: Literal["tanh", "relu", "elu"] = "tanh"
    """Hidden activation, as in PPO."""
    log_std_init: float = 0.0
    """Initial log std of the Gaussian head (continuous actions)."""
    loss: Literal["nll", "mse"] = "mse"
    """Continuous actions: mse fits the mean; nll fits the mean and the log std (the std PPO would
    then explore with). Discrete actions always use cross-entropy."""
    validation_fraction: float = 0.2
    """Share of the episodes held out to measure validation loss (0: train on all, no early stopping)."""
    patience: int = 10
    """Epochs without a lower validation loss before stopping (0: never stop early)."""
    normalize_obs: bool = True
    """Standardise observations with the training split's mean and std (frozen, saved with the policy)."""
    for_algo: Literal["ppo", "sac"] = "ppo"
    """The algorithm the clone is for (--init-from): its network is that algorithm's (sac:
    continuous actions, --loss mse)."""
    eval_every: int = 500
    """Evaluate the deterministic policy in the env every this many gradient steps (0 disables)."""
    checkpoint_every: int = 10
    """Write checkpoints/latest.pt every this many epochs (and always at the end)."""
    log_every: int = 1
    """Write a metrics line every this many epochs."""

    @property
    def budget(self) -> int:  # gradient steps, unknown until the dataset is read: no total to show
        return 0

    @property
    def budget_text(self) -> str:  # total_timesteps is unused: bc trains for epochs
        return f"{self.epochs} epochs"

    def validate(self) -> None:
        super().validate()
        if not self.dataset:
            raise UserError(f"bc learns from recorded episodes; pass --dataset FILE (record one with: "
                            f"rung collect --env {self.env} --policy expert --episodes 20 -o demos.npz)")
        if not Path(self.dataset).exists():
            raise UserError(f"--dataset {self.dataset}: no such file or folder; check the path")
        positive(self, "epochs", "batch_size", "learning_rate")
        non_negative(self, "patience")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise UserError(f"--validation-fraction must be in [0, 1), got {self.validation_fraction}")
        learns_from_a_dataset(self, "bc")
        widths(self, "hidden_sizes")
        if self.for_algo == "sac" and self.loss != "mse":
            raise UserError("--for-algo sac clones with --loss mse (the squashed Gaussian's log-likelihood is infinite "
                            "at the action bounds scripted experts push onto); pass --loss mse")


def make_agent(cfg: Config, env) -> ActorCritic | SACAgent:
    """The network --for-algo names, as that algorithm builds it from the same flags."""
    if cfg.for_algo == "sac":
        return sac.make_agent(sac.Config(env=cfg.env, hidden_sizes=cfg.hidden_sizes, normalize_obs=cfg.normalize_obs), env)
    return make_actor_critic(cfg, env)


def policy_parameters(agent: ActorCritic | SACAgent) -> list[torch.nn.Parameter]:
    """What cloning trains: the actor. Critics are left out, since nothing here trains them and
    the fine-tuning algorithm fits them."""
    if isinstance(agent, SACAgent):
        return list(agent.actor.parameters())
    return [*agent.actor_body.parameters(), *agent.head.parameters()]


def bc_loss(agent: ActorCritic | SACAgent, obs: torch.Tensor, actions: torch.Tensor, loss: str
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample loss (B,) of the policy on recorded (obs, action) pairs."""
    if isinstance(agent, SACAgent):
        actor = agent.actor
        return bc_mse_loss(sac.unit_action(actor, agent.obs_norm(obs)),
                           ((actions - actor.bias) / actor.scale).clamp(-1.0, 1.0))
    params = agent.dist_params(obs)
    if agent.discrete:
        return bc_discrete_loss(params, actions)
    mean, log_std = params
    if loss == "nll":
        return bc_gaussian_nll_loss(mean, log_std, actions)
    return bc_mse_loss(mean, actions)


@torch.no_grad()
def dataset_loss(agent: ActorCritic | SACAgent, obs: torch.Tensor, actions: torch.Tensor, loss: str) -> dict[str, float]:
    """Mean loss and stats over a whole split, each chunk weighted by its size."""
    sums: dict[str, float] = {}
    for o, a in zip(obs.split(EVAL_CHUNK), actions.split(EVAL_CHUNK)):
        per_sample, stats = bc_loss(agent, o, a, loss)
        for k, v in {"loss": per_sample.mean(), **stats}.items():
            sums[k] = sums.get(k, 0.0) + float(v) * o.shape[0]
    return {k: v / obs.shape[0] for k, v in sums.items()}


class EarlyStopping:
    """The lowest validation loss so far, the weights that reached it, and the epochs since:
    what a resumed run needs to stop (and keep) where an uninterrupted one would."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best, self.best_epoch, self.bad_epochs = math.inf, 0, 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        # The last epoch's weights, kept by a finished run whose agent then holds the best ones:
        # a resume with more --epochs trains on from these, as an uninterrupted run would.
        self.last_weights: dict[str, torch.Tensor] | None = None
        self.stopped = False

    def update(self, loss: float, epoch: int, agent: torch.nn.Module) -> None:
        if loss < self.best:
            self.best, self.best_epoch, self.bad_epochs = loss, epoch, 0
            # copy.deepcopy: a SAC agent's state also holds its normaliser's counts, as a dict.
            self.best_weights = copy.deepcopy(agent.state_dict())
        else:
            self.bad_epochs += 1
            self.stopped = 0 < self.patience <= self.bad_epochs

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "best_weights": self.best_weights, "last_weights": self.last_weights, "stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        self.best_weights, self.stopped = state["best_weights"], state["stopped"]
        self.last_weights = state.get("last_weights")  # checkpoints before 2026-11-28 have none


def train(cfg: Config, *, resume: bool = False, force: bool = False) -> TrainResult:
    # best.pt is the clone early stopping keeps (lowest validation loss), not the one the env
    # evaluations scored highest: --init-from, collect and policy_from_run load best.pt, and
    # picking a clone by env return would use the reward that imitation does not assume.
    run = Run("bc", cfg, resume=resume, force=force, best_by_eval=False)
    device = run.device
    # Never stepped for training: it holds the observation statistics and tells Run how to
    # build the evaluation env.
    envs = make_env(cfg.env, 1, run.env_seed, device=device, normalize_obs=env_normalizes_obs(cfg))
    data = load_dataset(cfg.dataset, envs, cfg.env, "bc", run.logger.info)
    if cfg.validation_fraction > 0:
        if data.num_episodes < 2:
            raise UserError(f"{cfg.dataset} holds {data.num_episodes} episode, too few to hold one out for validation; "
                            "record more or pass --validation-fraction 0")
        train_set, val_set = data.split(1.0 - cfg.validation_fraction, seed=cfg.seed)
    else:
        train_set, val_set = data, None
    fit_obs_normalizer(envs, train_set.observations)
    obs = normalized_obs(envs, train_set.observations, device)  # (N, obs_dim)
    actions = torch.as_tensor(train_set.actions, device=device)  # (N,) int64 or (N, act_dim)
    if val_set is not None:
        val_obs = normalized_obs(envs, val_set.observations, device)
        val_actions = torch.as_tensor(val_set.actions, device=device)

    agent = make_agent(cfg, envs).to(device)
    if isinstance(agent, SACAgent):
        # The training split's statistics, set once: obs above are raw (the env does not
        # normalise for SAC), and bc never updates them again.
        agent.obs_norm.update(torch.as_tensor(train_set.observations, dtype=torch.float32))
    opt = adam(policy_parameters(agent), cfg.learning_rate)
    early = EarlyStopping(cfg.patience)
    modules = {"agent": agent, "optimizer": opt, "early_stopping": early}

    start, step = run.restore(modules, envs)
    if early.last_weights is not None:  # a finished run, extended: go on from its last epoch
        agent.load_state_dict(early.last_weights)
        early.last_weights = None  # later checkpoints hold the weights being trained
    if start == 0:
        run.logger.info(f"{data.num_episodes} episodes ({len(data):,} steps, mean return {data.mean_return:.2f}); "
                        f"training on {train_set.num_episodes}, validating on {val_set.num_episodes if val_set else 0}")
        run.logger.log(0, 0.0, {"dataset/mean_return": data.mean_return, "dataset/episodes": data.num_episodes,
                                "dataset/steps": len(data)})
    n = obs.shape[0]
    completed = start
    for epoch in run.iterations(start, cfg.epochs):
        if early.stopped:  # a run resumed after it stopped early
            break
        t0 = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        # The permutation is drawn on the CPU generator, whose state checkpoints carry.
        for idx in torch.randperm(n).to(device).split(cfg.batch_size):
            per_sample, stats = bc_loss(agent, obs[idx], actions[idx], cfg.loss)
            loss = per_sample.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            for k, v in {"train": loss.detach(), **stats}.items():
                sums[k] = sums.get(k, 0.0) + v * idx.shape[0]
        step_before = step - math.ceil(n / cfg.batch_size)
        metrics: dict[str, Any] = {f"losses/{k}": float(v) / n for k, v in sums.items()}
        if val_set is not None:
            val = dataset_loss(agent, val_obs, val_actions, cfg.loss)
            metrics.update({"losses/validation" if k == "loss" else f"losses/validation_{k}": v for k, v in val.items()})
            early.update(val["loss"], epoch + 1, agent)
        completed = epoch + 1
        metrics["charts/epoch"] = completed
        run.log(completed, step, metrics, [], [], sps=n / (time.perf_counter() - t0))
        run.maybe_evaluate(agent, envs, step_before, step)
        run.maybe_checkpoint(completed, step, modules, envs)
        if early.stopped:
            run.logger.info(f"epoch {completed}: validation loss has not improved for {early.bad_epochs} epochs; stopping")
            break
        if run.should_stop:
            break

    if early.best_weights is not None:
        early.last_weights = copy.deepcopy(agent.state_dict())
        agent.load_state_dict(early.best_weights)
        run.logger.info(f"kept the weights of epoch {early.best_epoch} (validation loss {early.best:.4f})")
    result = run.finish(agent, envs, completed, step, modules)
    if result.summary:
        result.summary.update({"step_unit": "gradient steps", "epochs": completed,
                               "best_validation_loss": early.best if early.best_weights is not None else None,
                               "best_validation_epoch": early.best_epoch or None, "stopped_early": early.stopped,
                               "dataset": str(cfg.dataset), "dataset_episodes": data.num_episodes,
                               "dataset_mean_return": data.mean_return})
        write_json_atomic(result.run_dir / "summary.json", result.summary)
    return result
