"""A training run's lifecycle, shared by every algorithm: its folder, logger, periodic evaluation,
checkpoints and summary. Algorithms call these verbs from their own loop; nothing here runs a loop.

Run folder contract (tools read it):
    config.yaml        the resolved config, with `algo`
    metrics.jsonl      one JSON object per logged moment: step, wall, metrics
    events.out.tfevents.*  the same metrics for TensorBoard
    checkpoints/latest.pt  everything needed to resume; checkpoints/best.pt the best-evaluated policy
                       (learning from a dataset, the one the algorithm reports: bc's kept clone,
                       td3_bc's final policy)
    curve.png          return against env steps and against wall-clock
    summary.json       final evaluation, solved threshold, when it was first reached
    eval_samples/      language-model runs: the held-out responses of each evaluation (rung.llm.loop)
"""

from __future__ import annotations

import copy
import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import rung
from rung import checkpoint, seeding
from rung.config import BaseConfig, flag, to_dict
from rung.distributed import ddp
from rung.envs.make import make_env
from rung.errors import UserError
from rung.logging.logger import Logger
from rung.logging.plots import plot_curve
from rung.rollout.evaluate import evaluate
from rung.types import VecEnv

RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "summary.json")
# Logged losses that, once not finite, mean the run has diverged and will not recover.
DIVERGENCE_KEYS = ("losses/policy", "losses/value", "losses/actor", "losses/critic", "losses/td", "losses/train")


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]
    agent: torch.nn.Module | None = field(default=None, repr=False)


def default_run_dir(algo: str, cfg: BaseConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.subject.replace('/', '-')}__{algo}__{cfg.seed}__{stamp}"


def rss_mb() -> float:
    """Resident memory now (Linux /proc), else the peak that getrusage knows."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_json_atomic(path: Path, obj: Any) -> None:
    checkpoint.write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def prepare_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a folder; choose another --run-dir")
    if resume:
        if not (run_dir / "config.yaml").exists():
            raise UserError(f"{run_dir} holds no run to resume (no config.yaml); check the path")
        # A process killed while saving leaves its temporary file (as large as a checkpoint).
        for tmp in [*(run_dir / "checkpoints").glob(".*.tmp*"), *run_dir.glob(".*.tmp*")]:
            tmp.unlink(missing_ok=True)
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            what = "another run" if any((run_dir / f).exists() for f in RUN_FILES) else "files"
            raise UserError(f"{run_dir} already holds {what}; pass --resume {run_dir} to continue it, --force to overwrite it, or choose another --run-dir")
        # Set aside, not deleted: a run refused during its set-up (an env it cannot make, a model
        # that does not load) puts the old one back (put_back_replaced); restore() deletes it.
        old = replaced_path(run_dir)
        shutil.rmtree(old, ignore_errors=True)
        run_dir.rename(old)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)


def replaced_path(run_dir: Path) -> Path:
    """Where `--force` keeps the run it replaces until the new one starts training."""
    return run_dir.with_name(f".{run_dir.name}.replaced")


def put_back_replaced(run_dir: Path) -> bool:
    """Undo `--force` for a run that stopped before training: the old run takes its folder back.
    Returns whether there was one to put back."""
    old = replaced_path(run_dir)
    if not old.is_dir() or (run_dir / "checkpoints" / "latest.pt").exists():
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    old.rename(run_dir)
    return True


def first_missing(path: Path) -> Path | None:
    """The highest folder of `path` (itself included) that does not exist yet; None if it exists."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def discard_unstarted(run_dir: Path, made_from: Path) -> None:
    """Remove `run_dir` if it holds nothing yet (no checkpoint, no logged row), and the folders up
    to `made_from` (first_missing before the run) that this leaves empty. `rung train` calls it
    when a run is refused, so a mistyped flag leaves no clutter."""
    metrics = run_dir / "metrics.jsonl"
    if not run_dir.is_dir() or any((run_dir / "checkpoints").glob("*")) or (metrics.exists() and metrics.stat().st_size):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    folder = run_dir
    while folder != made_from:
        folder = folder.parent
        if any(folder.iterdir()):
            break
        folder.rmdir()


FINAL_ROUND = 10**6  # the final evaluation's round: a number no periodic evaluation reaches


def evaluation_seed(seed: int, episodes: int, eval_round: int) -> int:
    """The seed of the first episode of evaluation round `eval_round` (on gymnasium envs episode i
    starts from this plus i; a batched env seeds its one generator with it, and on a GPU and a CPU
    that generator draws different start states): a function of the run's seed and the round
    only, never of the history, so that peers in bench/ can play the same start states."""
    return 1_000_000 + 10_007 * seed + episodes * eval_round


def best_at_checkpoint(best: Path) -> Path:
    """Where Run.save keeps a hard link to the best.pt of its checkpoint's moment."""
    return best.with_name(".best_at_checkpoint.pt")


def keep_best_at_checkpoint(best: Path) -> None:
    """Link best.pt as it stands when latest.pt is written. A later best replaces best.pt by
    rename, so the link keeps the old file at no cost in disk, and drop_best_after can put it
    back: otherwise a resumed run that does not replay exactly (MuJoCo envs do not pickle; GPU
    arithmetic) may never beat the restored best value again and end with no best.pt at all."""
    kept = best_at_checkpoint(best)
    kept.unlink(missing_ok=True)
    if best.exists():
        try:
            os.link(best, kept)
        except OSError:  # a filesystem without hard links
            shutil.copy2(best, kept)


def drop_best_after(best: Path, step: int) -> None:
    """Remove best.pt if an evaluation after the checkpoint at `step` wrote it: the resumed run
    replays from `step` as if that work never happened (its metrics rows are dropped alike), and
    its best-so-far value, restored from the checkpoint, would disagree with the file. The best.pt
    of the checkpoint's moment takes its place."""
    if best.exists():
        try:
            # mmap: only the step is read, not a language model's weights.
            later = torch.load(best, map_location="cpu", weights_only=False, mmap=True)["step"] > step
        except Exception:
            later = True  # unreadable: written when the process died
        if later:
            best.unlink()
    kept = best_at_checkpoint(best)
    if not best.exists() and kept.exists():
        kept.rename(best)


def mismatch(saved: dict[str, Any], cfg: BaseConfig) -> str:
    """The settings in which `cfg` differs from the config a checkpoint was written with."""
    def plain(v: Any) -> Any:  # a tuple read back from config.yaml is a list
        return list(v) if isinstance(v, tuple) else v

    now = to_dict(cfg)
    diff = [f"--{k.replace('_', '-')} {plain(now[k])} against {plain(saved[k])}" for k in now
            if k in saved and k != "run_dir" and plain(now[k]) != plain(saved[k])]
    return "; ".join(diff) if diff else "the same settings; the checkpoint may come from an older rung"


# Agents up to this size (every parameter, critics and target networks included) are evaluated on
# the CPU in runs of batched envs on a GPU (Run._eval_policy): a 256x256 SAC agent is about 0.34M.
CPU_EVAL_MAX_PARAMS = 1_000_000

# What one loop iteration is made of. A checkpoint counts iterations, and the loops count their
# budget, schedules and log/checkpoint intervals in them, so a resumed run must keep these.
ITERATION_FIELDS = ("num_envs", "num_steps")


def refuse_on_resume(saved: dict[str, Any], cfg: BaseConfig, step: int) -> None:
    """A one-line UserError for flags a resume cannot honour: another iteration size, another
    env, or a budget the checkpoint has already passed."""
    for name in ITERATION_FIELDS:
        if name in saved and hasattr(cfg, name) and getattr(cfg, name) != saved[name]:
            given = f"--{flag(name)}"
            raise UserError(f"{given} {getattr(cfg, name)} against the checkpoint's {saved[name]}: the checkpoint counts "
                            f"loop iterations, which {given} sizes; resume with {given} {saved[name]} or start a new run")
    if "env" in saved and getattr(cfg, "env", saved["env"]) != saved["env"]:
        raise UserError(f"--env {cfg.env} against the checkpoint's {saved['env']}: a resumed run goes on in the env it "
                        f"trained in; start a new run for {cfg.env}")
    # sft over a dataset counts its steps from --epochs; bc has no step budget (budget 0).
    if 0 < cfg.budget < step and not getattr(cfg, "epochs", 0):
        name = "total_timesteps" if hasattr(cfg, "total_timesteps") else "total_steps"
        raise UserError(f"--{flag(name)} {cfg.budget:,} is below the checkpoint's step {step:,}: a resumed "
                        f"run goes on from there; give at least {step:,}")


class Counters(dict):
    """Loop counters that a resumed run continues from (gradient steps taken, ...): goes into
    the checkpoint's modules like any object with a state_dict."""

    def state_dict(self) -> dict[str, int]:
        return dict(self)

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.update(state)


class EpisodeTally:
    """Episodes that ended since the last log line, for loops that step envs one at a time and
    log every `log_every` steps (the off-policy algorithms). In the checkpoint, since a checkpoint
    can fall between two log lines: a resumed run's next line then counts the same episodes."""

    optional_in_checkpoint = True  # checkpoints written before it was saved resume without it

    def __init__(self) -> None:
        self.episodes: list[tuple[float, int]] = []  # (return, length)
        self.successes: list[float] = []  # the env's is_success at episode end, where it reports one
        self.t = time.perf_counter()

    def state_dict(self) -> dict[str, list]:
        return {"episodes": list(self.episodes), "successes": list(self.successes)}

    def load_state_dict(self, state: dict[str, list]) -> None:
        self.episodes[:] = [tuple(e) for e in state["episodes"]]
        self.successes[:] = state["successes"]

    def flush(self, run: "Run", iteration: int, step: int, metrics: dict[str, Any], steps: int) -> None:
        """Log `metrics` (tensors read to floats here, the one host read per log line) with the
        episodes since the last call; `steps` env steps were taken since then."""
        now = time.perf_counter()
        metrics = {k: float(v) for k, v in metrics.items()}
        if self.successes:
            metrics["charts/success_rate"] = sum(self.successes) / len(self.successes)
        run.log(iteration, step, metrics, [r for r, _ in self.episodes], [n for _, n in self.episodes],
                sps=steps / (now - self.t))
        self.episodes.clear()
        self.successes.clear()
        self.t = now


class Run:
    """Call order in an algorithm: Run(...) -> restore() -> for each of iterations(start, n):
    [log(), maybe_evaluate(), maybe_checkpoint(), stop if should_stop] -> finish()."""

    def __init__(self, algo: str, cfg: BaseConfig, *, resume: bool = False, force: bool = False,
                 multi_process: bool = False, best_by_eval: bool = True):
        """`multi_process`: the algorithm averages its gradients over torchrun's processes; the
        others are refused under torchrun rather than run as N unsynchronised copies.
        `best_by_eval=False`: the algorithm picks its own best weights (bc, on validation loss)
        and hands them to finish(), which writes them as best.pt; evaluations only measure."""
        cfg.validate()
        self.algo, self.cfg, self.resume = algo, cfg, resume
        self.best_by_eval = best_by_eval
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--device {cfg.device} asked for, but torch sees no CUDA device; use --device cpu")
        index = cfg.device.partition(":")[2]
        if index and int(index) >= torch.cuda.device_count():
            raise UserError(f"--device {cfg.device}: torch sees {torch.cuda.device_count()} CUDA device(s), "
                            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        if index and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Each torchrun process takes the GPU of its LOCAL_RANK; a fixed index would put every
            # rank on one GPU, which NCCL refuses.
            raise UserError(f"--device {cfg.device} under torchrun: use --device cuda, and each process "
                            "takes cuda:LOCAL_RANK")
        self.dist = ddp.init(cfg.device)
        if self.dist.world_size > 1 and not multi_process:
            ddp.shutdown()
            raise UserError(f"{algo} runs in one process and this is {self.dist.world_size} (torchrun); "
                            "launch it without torchrun, or use ppo, reinforce, grpo, ppo_llm, reinforce_llm or sft")
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if cfg.device == "cuda" else cfg.device)
        # Each rank draws its own actions and runs its own env seeds.
        self.env_seed = cfg.seed + 100_003 * self.dist.rank
        seeding.seed_everything(cfg.seed + self.dist.rank)

        run_dir = Path(cfg.run_dir or default_run_dir(algo, cfg))
        run_dir = Path(ddp.broadcast_object(str(run_dir)))
        if self.dist.is_main:
            prepare_run_dir(run_dir, resume=resume, force=force)
            if not resume:  # a resumed run's config.yaml changes only once its checkpoint has loaded
                self._write_config(run_dir)
        ddp.barrier()
        self.run_dir = run_dir
        self.ckpt = checkpoint.load(run_dir / "checkpoints" / "latest.pt") if resume else None
        if self.ckpt:
            refuse_on_resume(self.ckpt.get("config", {}), cfg, self.ckpt["step"])
        start_step = self.ckpt["step"] if self.ckpt else 0
        if self.ckpt and self.dist.is_main:
            drop_best_after(run_dir / "checkpoints" / "best.pt", start_step)
        self.threshold = cfg.solved_threshold
        self.logger = Logger(run_dir, cfg.budget, start_step=start_step, enabled=self.dist.is_main,
                             rows_at_save=self.ckpt.get("metrics_rows") if self.ckpt else None)
        self.eval_state: dict[str, Any] = {"round": 0, "best": -math.inf, "solved_at_step": None,
                                           "solved_at_seconds": None}
        self.wall_offset = 0.0
        self.t0 = time.perf_counter()
        self._eval_env: VecEnv | None = None
        self._eval_twin: torch.nn.Module | None = None
        self._recent_returns: list[float] = []
        # Said once set-up has passed (restore), so a run refused during it never seems to start.
        self._header = None if resume else f"{algo} on {cfg.subject}, seed {cfg.seed}, {cfg.budget_text} -> {run_dir}"

    def _write_config(self, run_dir: Path) -> None:
        # run_dir last: read_run_config takes a file without it for one cut short.
        config = {"algo": self.algo, **{k: v for k, v in to_dict(self.cfg).items() if k != "run_dir"},
                  "run_dir": str(run_dir)}
        checkpoint.write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    @property
    def wall(self) -> float:
        """Seconds of training since the loop started, summed across resumes."""
        return self.wall_offset + time.perf_counter() - self.t0

    # -- checkpoints ---------------------------------------------------------------------------

    def restore(self, modules: dict[str, Any], envs: VecEnv | None = None) -> tuple[int, int]:
        """Load the checkpoint into `modules` (name -> object with load_state_dict) and `envs`
        (None for runs without envs); returns (iteration, step) to continue from, (0, 0) for a
        fresh run."""
        # The clock starts here, with the loop: set-up (imports, env and network construction) is
        # not training time, and peers' clocks (SB3's learn()) leave it out too.
        self.t0 = time.perf_counter()
        if self.ckpt is None:
            if self._header:
                self.logger.info(self._header)
            if self.dist.is_main:  # set-up passed: the run --force replaced goes for good
                shutil.rmtree(replaced_path(self.run_dir), ignore_errors=True)
            return 0, 0
        ck = self.ckpt
        for name, module in modules.items():
            if name not in ck and getattr(module, "optional_in_checkpoint", False):
                continue
            # An optimizer's state dict carries its hyperparameters too: keep this run's, so that
            # a --learning-rate given with --resume holds as config.yaml will say it does.
            hyper = ([{k: v for k, v in g.items() if k != "params"} for g in module.param_groups]
                     if isinstance(module, torch.optim.Optimizer) else None)
            try:
                module.load_state_dict(ck[name])
                for group, kept in zip(module.param_groups if hyper else (), hyper or ()):
                    group.update(kept)
            except (RuntimeError, ValueError, KeyError) as e:
                raise UserError(f"the checkpoint's {name} does not fit this run ({mismatch(ck.get('config', {}), self.cfg)}); "
                                f"resume without the flags that change it") from e
        ranks = ck["ranks"]
        if len(ranks) != self.dist.world_size:
            raise UserError(f"the checkpoint was written by {len(ranks)} process(es); resume it with the same number (got {self.dist.world_size})")
        own = ranks[self.dist.rank]
        if envs is not None and not envs.load_state_dict(own["env"]):
            # The envs start new episodes (their simulators do not pickle): whatever tracks the
            # running ones (HER's buffer) ends them here, or it would join each to the next.
            for module in modules.values():
                if hasattr(module, "cut_episodes"):
                    module.cut_episodes()
        seeding.set_rng_state(own["rng"])
        self.eval_state = ck["eval"]
        self.wall_offset = ck["wall"]
        if self.dist.is_main:
            self._write_config(self.run_dir)  # flags given with --resume (a longer budget, say) now hold
        self.logger.info(f"resumed {self.run_dir} at step {ck['step']:,}")
        return ck["iteration"], ck["step"]

    def start_clock(self) -> None:
        """Restart the training clock (after work done before the loop that is not training, such
        as a language model's evaluation before its first step)."""
        self.t0 = time.perf_counter()

    def save(self, iteration: int, step: int, modules: dict[str, Any], envs: VecEnv | None = None) -> None:
        own = {"env": None if envs is None else envs.state_dict(), "rng": seeding.rng_state()}
        ranks = ddp.gather_object(own, self.dist)
        if self.dist.is_main:
            ck = {"format": checkpoint.FORMAT, "algo": self.algo, "config": to_dict(self.cfg), "iteration": iteration,
                  "step": step, "wall": self.wall, "eval": dict(self.eval_state), "ranks": ranks,
                  "rung_version": rung.__version__}
            ck.update({name: m.state_dict() for name, m in modules.items()})
            ck["metrics_rows"] = self.logger.rows
            checkpoint.save_atomic(ck, self.run_dir / "checkpoints" / "latest.pt")
            keep_best_at_checkpoint(self.run_dir / "checkpoints" / "best.pt")

    def maybe_checkpoint(self, iteration: int, step: int, modules: dict[str, Any], envs: VecEnv | None = None) -> None:
        """`iteration` counts completed iterations; saving happens at iteration boundaries so that
        a resumed run replays exactly what an uninterrupted one would."""
        if iteration % self.cfg.checkpoint_every == 0:
            self.save(iteration, step, modules, envs)

    # -- logging -------------------------------------------------------------------------------

    def log(self, iteration: int, step: int, metrics: dict[str, Any], episode_returns: list[float],
            episode_lengths: list[int], sps: float, progress_value: float | None = None) -> None:
        """Log one iteration's metrics; the progress line shows the recent episodes' mean return,
        or `progress_value` for runs without episodes (a language model's mean reward)."""
        for key in DIVERGENCE_KEYS:
            # Once an update goes non-finite every later one does too: stop at the first.
            if metrics.get(key) is not None and not math.isfinite(loss := float(metrics[key])):
                raise UserError(f"training diverged at step {step:,}: {key} is {loss}; lower --learning-rate "
                                "(or --max-grad-norm) and start again")
        if episode_returns:
            metrics["charts/episodic_return"] = float(np.mean(episode_returns))
            metrics["charts/episodic_length"] = float(np.mean(episode_lengths))
            self._recent_returns = (self._recent_returns + episode_returns)[-20:]
        metrics["charts/sps"] = sps
        metrics["sys/rss_mb"] = rss_mb()
        if iteration % self.cfg.log_every == 0:
            self.logger.log(step, self.wall, metrics)
        ret = float(np.mean(self._recent_returns)) if self._recent_returns else progress_value
        self.logger.progress(step, ret, sps)

    # -- evaluation ----------------------------------------------------------------------------

    def _evaluate(self, agent: torch.nn.Module, envs: VecEnv, eval_round: int,
                  successes: list[float] | None = None) -> list[float]:
        policy, device = self._eval_policy(agent)
        if self._eval_env is None:
            self._eval_env = make_env(self.cfg.env, self.cfg.eval_episodes, 0, device=device,
                                      normalize_obs=envs.normalizer.norm_obs)
        # Evaluation seeds depend only on the run's seed and the round, never on the history.
        seed = evaluation_seed(self.cfg.seed, self.cfg.eval_episodes, eval_round)
        return evaluate(policy, self._eval_env, seed, envs.normalizer.state_dict(), device, successes=successes)

    def _eval_policy(self, agent: torch.nn.Module) -> tuple[torch.nn.Module, torch.device]:
        """The policy evaluation plays and where: `agent` on the run's device, or, for a small
        policy of a batched env on a GPU, a CPU copy of it on CPU envs. An evaluation steps a few
        envs one step at a time, and on a GPU each step is a few dozen kernel launches the host
        waits on: on an H200 a 475-step evaluation took 312 ms against 152 ms on its host's CPU,
        and evaluating was 40 to 70% of a batched CartPole run's time (BENCHMARKS.md)."""
        if self._eval_twin is None:
            self._eval_twin = copy.deepcopy(agent).cpu() if self.evaluates_on_cpu(agent) else agent
        if self._eval_twin is agent:
            return agent, self.device
        self._eval_twin.load_state_dict(agent.state_dict())
        return self._eval_twin, torch.device("cpu")

    def evaluates_on_cpu(self, agent: torch.nn.Module) -> bool:
        from rung.envs.batched import PREFIX

        small = sum(p.numel() for p in agent.parameters()) <= CPU_EVAL_MAX_PARAMS
        # A compiled network would be compiled again for the CPU copy, at seconds a time (sac's
        # --compile compiles its update, not the networks).
        compiled_networks = getattr(self.cfg, "compile", False) and not getattr(self.cfg, "compiled_update", False)
        return self.device.type == "cuda" and self.cfg.env.startswith(PREFIX) and small and not compiled_networks

    def maybe_evaluate(self, agent: torch.nn.Module, envs: VecEnv, step_before: int, step: int) -> None:
        every = self.cfg.eval_every
        if every <= 0 or step // every == step_before // every or not self.dist.is_main:
            return
        st = self.eval_state
        successes: list[float] = []
        returns = self._evaluate(agent, envs, st["round"], successes)
        st["round"] += 1
        mean, std = float(np.mean(returns)), float(np.std(returns))
        metrics = {"eval/mean_return": mean, "eval/std_return": std}
        if successes:
            metrics["eval/success_rate"] = float(np.mean(successes))
        self.logger.log(step, self.wall, metrics)
        if mean > st["best"]:
            st["best"] = mean
            if self.best_by_eval:
                self._save_best(agent, envs, step, mean)
        solved = ""
        if self._solved(mean, successes) and st["solved_at_step"] is None:
            st["solved_at_step"], st["solved_at_seconds"] = step, round(self.wall, 2)
            solved = f"  [green]solved[/green] (>= {self._target_text()})"
        rate = f"  success {metrics['eval/success_rate']:.2f}" if successes else ""
        self.logger.info(f"step {step:>9,}  eval return {mean:9.2f} ± {std:7.2f}{rate}  ({self.wall:6.1f} s){solved}")

    def _save_best(self, agent: torch.nn.Module, envs: VecEnv, step: int, mean: float) -> None:
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "algo": self.algo, "config": to_dict(self.cfg),
                                "step": step, "agent": agent.state_dict(), "eval_mean_return": mean,
                                "normalizer": envs.normalizer.state_dict()},
                               self.run_dir / "checkpoints" / "best.pt")

    def _solved(self, mean_return: float, successes: list[float]) -> bool:
        if self.threshold is not None:
            return mean_return >= self.threshold
        target = self.cfg.target_success_rate
        return target is not None and bool(successes) and float(np.mean(successes)) >= target

    def _target_text(self) -> str:
        return f"{self.threshold:g}" if self.threshold is not None else f"success rate {self.cfg.target_success_rate:g}"

    @property
    def should_stop(self) -> bool:
        """True once solved when the config asks to stop there; the same answer on every rank."""
        if not self.cfg.stop_when_solved or self.cfg.eval_every <= 0:
            return False
        return bool(ddp.broadcast_object(self.eval_state["solved_at_step"] is not None))

    def iterations(self, start: int, stop: int) -> range:
        """The loop's iterations from `start`: none for a run resumed from the checkpoint its
        finish() wrote after stopping solved (killed during the final evaluation, say), which
        would otherwise train once more before noticing."""
        return range(start, start if start and self.should_stop else stop)

    # -- the end -------------------------------------------------------------------------------

    def close(self, step: int, summary: dict[str, Any], *, plot: dict[str, str] | None = None) -> TrainResult:
        """The end of a run without envs (language-model algorithms evaluate on their task, not
        in an env), after the caller's last save(), which comes before its final evaluation:
        summary.json with the run-wide fields added to `summary`, curve.png from `plot`
        (plot_curve's keyword arguments)."""
        if self.dist.is_main:
            summary = {"algo": self.algo, "seed": self.cfg.seed, "steps": step, "wall_seconds": round(self.wall, 2),
                       **summary, "num_processes": self.dist.world_size, "rung_version": rung.__version__}
            write_json_atomic(self.run_dir / "summary.json", summary)
            self.logger.close()
            plot_curve(self.run_dir, **(plot or {}))
        ddp.barrier()
        return TrainResult(self.run_dir, summary if self.dist.is_main else {}, None)

    def finish(self, agent: torch.nn.Module, envs: VecEnv, iteration: int, step: int,
               modules: dict[str, Any]) -> TrainResult:
        self.save(iteration, step, modules, envs)
        summary: dict[str, Any] = {}
        st = self.eval_state
        newly_solved = False
        if self.dist.is_main:
            successes: list[float] = []
            returns = self._evaluate(agent, envs, FINAL_ROUND, successes)
            mean = float(np.mean(returns))
            if self._solved(mean, successes) and st["solved_at_step"] is None:
                st["solved_at_step"], st["solved_at_seconds"] = step, round(self.wall, 2)
                newly_solved = True
        if ddp.broadcast_object(newly_solved):
            # The checkpoint above predates the mark; without it a run extended with --resume
            # would read as unsolved and mark a later step.
            self.save(iteration, step, modules, envs)
        if self.dist.is_main:
            if not self.best_by_eval:
                self._save_best(agent, envs, step, mean)
            summary = {
                "algo": self.algo, "env": self.cfg.env, "seed": self.cfg.seed, "total_timesteps": step,
                "wall_seconds": round(self.wall, 2), "eval_mean_return": mean, "eval_std_return": float(np.std(returns)),
                "eval_episodes": len(returns), "solved_threshold": self.threshold if self.threshold is not None
                else self.cfg.target_success_rate,
                "solved_at_step": st["solved_at_step"], "solved_at_seconds": st["solved_at_seconds"],
                "best_eval_return": st["best"] if st["best"] > -math.inf else None,
                "num_processes": self.dist.world_size, "rung_version": rung.__version__,
            }
            if successes:
                summary["eval_success_rate"] = float(np.mean(successes))
            write_json_atomic(self.run_dir / "summary.json", summary)
            self.logger.log(step, self.wall, {"eval/final_mean_return": mean})
            self.logger.close()
            plot_curve(self.run_dir, threshold=self.threshold)
            solved = (f"solved at step {st['solved_at_step']:,} ({st['solved_at_seconds']} s)"
                      if st["solved_at_step"] is not None else "not solved")
            self.logger.info(f"done: eval return {mean:.2f} ± {summary['eval_std_return']:.2f} over {len(returns)} episodes; "
                             f"{solved}; run folder {self.run_dir}")
        if self._eval_env is not None:
            self._eval_env.close()
        envs.close()
        ddp.barrier()
        return TrainResult(self.run_dir, summary, agent)
