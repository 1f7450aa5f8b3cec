"""Starting a training run from another run's policy (`--init-from RUN_DIR`): behaviour cloning
then PPO (the offline-then-online pipeline), or a PPO or SAC run continued under new settings.

What both PPO and SAC need lives here: reading the source run's checkpoint, refusing a source
whose env, spaces or network differ (one line naming both runs' values), the config checks of
the --init-* flags, and observation statistics that stay frozen. Which parts of the source to
copy is each algorithm's decision and stays in its own file.

A library module rather than a function in rung/evaluation.py: that module answers `rung eval`
(load a policy and run it); this one checks a source against a new run and seeds its training
state, and only the loading step is shared (it calls load_policy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rung.config import flag, non_negative
from rung.envs.make import make_env
from rung.envs.wrappers import RunningMeanStd
from rung.errors import UserError
from rung.evaluation import load_policy


@dataclass
class Source:
    """A finished run's policy, as --init-from reads it."""

    run_dir: Path
    algo: str
    cfg: Any  # the source run's Config
    agent: torch.nn.Module  # its network, weights loaded
    normalizer: dict  # its env's Normalizer state (bc and ppo keep observation statistics there)
    checkpoint: str  # the file actually read: best, or latest where no evaluation wrote best
    step: int
    obs_shape: tuple[int, ...]
    action_space: str  # "discrete(2)", "continuous(1)"


def validate_init_flags(cfg: Any) -> None:
    """Checks of the --init-* fields, for a Config's validate()."""
    non_negative(cfg, "init_reg_coef", "init_reg_decay_steps")
    if cfg.init_reg_coef > 0 and not cfg.init_from:
        raise UserError("--init-reg-coef pulls the policy toward the one it started from; pass --init-from RUN_DIR "
                        "or set --init-reg-coef 0")
    if cfg.init_from and cfg.run_dir and Path(cfg.init_from).resolve() == Path(cfg.run_dir).resolve():
        raise UserError(f"--init-from and --run-dir are the same folder ({cfg.init_from}); write the new run elsewhere")


def action_space(env: Any) -> str:
    return f"{'discrete' if env.discrete else 'continuous'}({env.action_dim})"


def load_source(cfg: Any, envs: Any, algo: str, accepts: tuple[str, ...], why: str = "") -> Source:
    """The run named by cfg.init_from, refused unless its algorithm is in `accepts`, it ran in the
    same env as `envs` (a batched env and its gymnasium twin count as the same) and its
    observation shape and action space are those of `envs`. `why` completes the refusal of
    another algorithm."""
    run_dir = Path(cfg.init_from)
    if not (run_dir / "checkpoints").is_dir():
        raise UserError(f"--init-from {run_dir} holds no checkpoints/ folder; pass a run folder that 'rung train' wrote")
    # Building the source's network (and env) draws initial weights from the global RNG; forking
    # keeps that from shifting this run's random stream, so --init-from changes weights only.
    with torch.random.fork_rng(devices=[]):
        src_cfg, agent, normalizer, info = load_policy(run_dir, cfg.init_from_checkpoint)
        if info["algo"] not in accepts:
            raise UserError(f"--init-from {run_dir} is a {info['algo']} run; {algo} starts only from "
                            f"{' or '.join(accepts)} runs{why}")
        if src_cfg.env.removeprefix("batched/") != cfg.env.removeprefix("batched/"):
            raise UserError(f"--init-from {run_dir} was trained on {src_cfg.env} and this run is on {cfg.env}; "
                            f"pass --env {src_cfg.env} or start from a {cfg.env} run")
        src_env = make_env(src_cfg.env, 1, 0)
        obs_shape, space = tuple(src_env.obs_shape), action_space(src_env)
        src_env.close()
    src = Source(run_dir, info["algo"], src_cfg, agent, normalizer, info["path"].stem, info["step"], obs_shape,
                 space)
    require_same(src, "observation shape", obs_shape, tuple(envs.obs_shape), None)
    require_same(src, "action space", space, action_space(envs), None)
    return src


def show(value: Any) -> str:
    """A value as its flag takes it: 64,64 for widths, true/false for switches."""
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def require_same(src: Source, field: str, theirs: Any, ours: Any, fix_flag: str | None = "") -> None:
    """One-line refusal naming both runs' values of `field`; the fix passes the source's value
    with --`fix_flag` (default: the field's own flag), or, with None, asks for another source."""
    if theirs == ours:
        return
    if fix_flag is None:
        fix = "start from a run with the same env"
        theirs_s, ours_s = str(theirs), str(ours)
    else:
        theirs_s, ours_s = show(theirs), show(ours)
        fix = f"pass --{flag(fix_flag or field)} {theirs_s} or start from a matching run"
    raise UserError(f"--init-from {src.run_dir} has {field} {theirs_s} and this run {ours_s}; {fix}")


class FrozenMeanStd(RunningMeanStd):
    """Statistics that load but never update."""

    def update(self, x: Any) -> None:
        pass


def freeze_obs_statistics(envs: Any) -> None:
    """Stop `envs` from updating its observation statistics while its reward scaling (when on)
    keeps learning: Normalizer.frozen would stop both. Call before envs.reset(), which would
    otherwise fold the first observations in; statistics loaded afterwards stay as loaded."""
    norm = envs.normalizer
    rms = norm.obs_rms
    frozen = FrozenMeanStd(tuple(rms.mean.shape), device=rms.mean.device if norm.torch else None)
    frozen.load_state_dict(rms.state_dict())
    norm.obs_rms = frozen
