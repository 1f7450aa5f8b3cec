"""Demonstrations -> behaviour cloning -> RL fine-tuning, against RL from scratch, in one command.

    python recipes/imitation/pipeline.py --env CartPole-v1 --seeds 1 2 3 --out runs/imitation/cartpole
    python recipes/imitation/pipeline.py --env Pendulum-v1 --seeds 1 2 3 --out runs/imitation/pendulum
    python recipes/imitation/pipeline.py --env FetchReach-v4 --algo sac --seeds 1 2 3 --out runs/imitation/fetchreach
    python recipes/imitation/pipeline.py --env CartPole-v1 --quick --out /tmp/imitation   (seconds; a smoke test)

1. records --demo-episodes episodes of the env's scripted expert (rung/envs/experts.py) into OUT/demos.npz;
2. clones them with rung.algos.bc into the network of the --algo that fine-tunes it (observations
   standardised, as fine-tuning then requires);
3. for each seed trains --algo (ppo or sac) from scratch (the env's preset from rung.presets where
   one exists) and from the clone (--init-from, the same settings with normalize_obs on, and the
   regulariser toward the clone: a KL for PPO, the squared action distance for SAC), both for
   --rl-steps env steps with periodic evaluation;
4. plays the expert, the clone and every run's final policy from the same --paired-episodes start
   states (none of them demonstrated or seen in training's evaluations): the "ends above the
   expert" comparison, which 10-episode evaluations are too noisy to make (on MountainCar one
   final evaluation read -102.5 where 100 paired episodes read -118.9);
5. plots OUT/pipeline.png and writes OUT/pipeline.json; prints the summary table.

Where the env's preset measures success (FetchReach), "at target" is the first evaluation whose
success rate reaches the preset's target; returns are still what the plot and the paired
comparison show. Every run is an ordinary run folder under OUT (bc/, scratch/seedN, from_bc/seedN), made by
train(cfg) in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rung import presets
from rung.algos import bc, ppo, sac
from rung.buffers import demos
from rung.envs.experts import get_expert
from rung.envs.make import env_threshold
from rung.errors import UserError
from rung.logging import read_metrics
from rung.logging.plots import EVAL_KEY, _pyplot
from rung.run import write_json_atomic

# The budgets --quick uses where a flag does not set them: enough for every stage to run and
# write its files in a few seconds, far too little to learn anything.
QUICK = {"demo_episodes": 2, "bc_epochs": 2, "rl_steps": 512, "eval_every": 256, "eval_episodes": 2, "paired_episodes": 2}
FULL = {"demo_episodes": 20, "bc_epochs": 200, "rl_steps": None, "eval_every": None, "eval_episodes": 10,
        "paired_episodes": 100}
# The paired comparison's start states: seeds from here on, far from the demonstrations' (0..)
# and evaluations' (1,000,000..).
PAIRED_SEED = 10_000
# Expert demonstrations are recorded from these seeds on, in this many env copies: the settings
# the experts' docstrings measured their returns with.
DEMO_SEED, DEMO_ENVS = 0, 4
# Evaluations per run when --eval-every is not given: enough points for a curve and for "first
# eval at the target" to mean something, without evaluation dominating the run time.
EVALS_PER_RUN = 20
# Default regulariser weights: of the order of the RL losses at the start, so the clone's
# actions hold while the fresh critic is still noise. PPO's is a KL; SAC's a squared distance
# between actions in [-1, 1], whose scale next to a Q-value loss is larger.
DEFAULT_REG_COEF = {"ppo": 0.1, "sac": 1.0}
ALGOS = {"ppo": ppo, "sac": sac}
SUCCESS_KEY = "eval/success_rate"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1", help="gymnasium id with a scripted expert (default CartPole-v1)")
    p.add_argument("--algo", choices=sorted(ALGOS), default="ppo", help="the RL algorithm, from scratch and from the clone "
                   "(default ppo; sac needs continuous actions)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="RL seeds; bc runs once, with the first")
    p.add_argument("--out", help="output folder (default runs/imitation/ENV); its run folders are overwritten")
    p.add_argument("--demo-episodes", type=int, help="expert episodes to record (default 20; --quick 2)")
    p.add_argument("--bc-epochs", type=int, help="bc epochs, fewer where early stopping ends it (default 200; --quick 2)")
    p.add_argument("--rl-steps", type=int, help="env steps per RL run (default the preset's total_timesteps, "
                   "else 100000; --quick 512)")
    p.add_argument("--eval-every", type=int, help=f"env steps between evaluations (default rl-steps/{EVALS_PER_RUN}; --quick 256)")
    p.add_argument("--eval-episodes", type=int, help="episodes per evaluation (default 10; --quick 2)")
    p.add_argument("--paired-episodes", type=int, help="start states on which the expert, the clone and every "
                   "final policy are compared (default 100; --quick 2)")
    p.add_argument("--init-reg-coef", type=float,
                   help="weight of the regulariser toward the clone in the fine-tuning loss (default "
                   f"{DEFAULT_REG_COEF['ppo']} for ppo's KL, {DEFAULT_REG_COEF['sac']} for sac's squared distance; 0 disables)")
    p.add_argument("--init-reg-decay-steps", type=int,
                   help="env steps over which that weight falls linearly to 0 (default a quarter of rl-steps)")
    p.add_argument("--quick", action="store_true", help="tiny budgets for a smoke test; explicit flags still win")
    a = p.parse_args(argv)
    for key, value in (QUICK if a.quick else FULL).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.init_reg_coef is None:
        a.init_reg_coef = DEFAULT_REG_COEF[a.algo]
    return a


def rl_settings(algo: str, env: str) -> tuple[dict[str, Any], str]:
    """`algo`'s overrides for `env` (its preset's, or none) and where they came from."""
    preset = presets.for_env(algo, env)
    if preset is None:
        return {"env": env}, f"{algo} defaults"
    return dict(preset.overrides), f"preset {preset.name}"


def target_for(algo: str, env: str) -> tuple[float | None, str]:
    """The target and the eval metric it applies to: the preset's success rate where it measures
    one, else a return (the preset's, or the env's registered threshold)."""
    preset = presets.for_env(algo, env)
    if preset is not None and preset.metric == "success_rate":
        return preset.target, SUCCESS_KEY
    return (preset.target if preset is not None else env_threshold(env)), EVAL_KEY


def eval_curve(rows: list[dict[str, Any]], key: str = EVAL_KEY) -> list[tuple[int, float]]:
    """(env step, `key`) of the periodic evaluations in a run's metrics rows, in order: the mean
    return by default."""
    return [(int(r["step"]), float(r[key])) for r in rows if key in r]


def first_at(curve: list[tuple[int, float]], target: float | None) -> int | None:
    return next((s for s, r in curve if target is not None and r >= target), None)


def median_steps(steps: list[int | None]) -> float | None:
    """Median with "never" ordered after every step, so a median that lands on a seed that
    never reached the target is None rather than the median of the seeds that did."""
    m = statistics.median([math.inf if s is None else s for s in steps])
    return None if math.isinf(m) else m


def plot(out: Path, env: str, algo: str, target: float | None, expert_return: float, bc_return: float,
         curves: dict[str, list[list[tuple[int, float]]]]) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.axhline(expert_return, c="tab:green", lw=1.2, label=f"expert demonstrations ({expert_return:.1f})")
    ax.axhline(bc_return, c="tab:purple", lw=1.2, label=f"bc clone ({bc_return:.1f})")
    if target is not None:
        ax.axhline(target, c="k", ls="--", lw=0.8, label=f"target ({target:g})")
    for (label, runs), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        runs = [c for c in runs if c]
        if not runs:
            continue
        # Seeds evaluate at the same steps unless one stopped early; interpolating onto the
        # shortest seed's range keeps the mean from mixing in seeds that have no value there.
        end = min(c[-1][0] for c in runs)
        start = max(c[0][0] for c in runs)
        grid = np.unique(np.concatenate([[s for s, _ in c if start <= s <= end] for c in runs]))
        ys = np.stack([np.interp(grid, [s for s, _ in c], [r for _, r in c]) for c in runs])
        ax.plot(grid, ys.mean(0), "o-", ms=3, c=color, label=f"{label} (mean of {len(runs)})")
        if len(runs) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), color=color, alpha=0.2)
    ax.set_xlabel(f"env steps ({algo})")
    ax.set_ylabel("mean eval return")
    ax.set_title(f"{env}: demonstrations -> bc -> {algo} fine-tuning vs {algo} from scratch", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = out / "pipeline.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_pipeline(a: argparse.Namespace) -> dict[str, Any]:
    out = Path(a.out or Path("runs/imitation") / a.env.replace("/", "-"))
    if a.demo_episodes < 2:
        raise UserError(f"--demo-episodes must be >= 2 (bc holds one episode out for validation), got {a.demo_episodes}")
    expert = get_expert(a.env)
    target, target_key = target_for(a.algo, a.env)
    # What the runs and the plot take as a return target: none where the target is a success rate.
    target_return = target if target_key == EVAL_KEY else None
    rl = ALGOS[a.algo]
    overrides, source = rl_settings(a.algo, a.env)
    rl_steps = a.rl_steps or overrides.get("total_timesteps", 100_000)
    eval_every = a.eval_every or max(rl_steps // EVALS_PER_RUN, 1)
    decay = a.init_reg_decay_steps if a.init_reg_decay_steps is not None else rl_steps // 4
    common = {"total_timesteps": rl_steps, "eval_every": eval_every, "eval_episodes": a.eval_episodes}
    preset_cfg = rl.Config(**overrides)
    first_update = max(getattr(preset_cfg, "learning_starts", 0), getattr(preset_cfg, "batch_size", 0))
    if hasattr(preset_cfg, "learning_starts") and rl_steps < first_update:
        # A smoke-test budget (--quick) below the preset's warm-up would train nothing: start
        # learning half-way instead.
        common["learning_starts"] = common["batch_size"] = max(rl_steps // 2, 1)
        print(f"--rl-steps {rl_steps} is below the preset's first update ({first_update}): "
              f"learning starts at {common['learning_starts']} with batches of {common['batch_size']}", flush=True)
    if target_key == EVAL_KEY:  # a success-rate preset keeps its own settings for the return target
        common["target_return"] = target
    scratch_cfg = dataclasses.replace(preset_cfg, **common)
    finetune_cfg = dataclasses.replace(scratch_cfg, normalize_obs=True, init_reg_coef=a.init_reg_coef,
                                       init_reg_decay_steps=decay)
    out.mkdir(parents=True, exist_ok=True)

    traj = demos.collect(a.env, expert, a.demo_episodes, seed=DEMO_SEED, num_envs=DEMO_ENVS, source="expert")
    demos.save(traj, out / "demos.npz")
    print(f"[1/5] expert: mean return {traj.mean_return:.2f} over {traj.num_episodes} episodes "
          f"({len(traj):,} steps) -> {out / 'demos.npz'}", flush=True)

    # The clone's network must be the one the RL algorithm fine-tunes: same widths (and activation).
    bc_cfg = bc.Config(env=a.env, dataset=str(out / "demos.npz"), epochs=a.bc_epochs, normalize_obs=True,
                       hidden_sizes=scratch_cfg.hidden_sizes, activation=getattr(scratch_cfg, "activation", "tanh"),
                       for_algo=a.algo, seed=a.seeds[0], eval_episodes=a.eval_episodes,
                       target_return=target_return, run_dir=str(out / "bc"))
    bc_summary = bc.train(bc_cfg, force=True).summary
    print(f"[2/5] bc: eval return {bc_summary['eval_mean_return']:.2f} after {bc_summary['epochs']} epochs "
          f"-> {out / 'bc'}", flush=True)

    seeds = []
    for seed in a.seeds:
        row: dict[str, Any] = {"seed": seed}
        for name, cfg in (("scratch", scratch_cfg), ("from_bc", finetune_cfg)):
            run_dir = out / name / f"seed{seed}"
            extra = {"init_from": str(out / "bc")} if name == "from_bc" else {}
            summary = rl.train(dataclasses.replace(cfg, seed=seed, run_dir=str(run_dir), **extra), force=True).summary
            rows = read_metrics(run_dir)
            curve = eval_curve(rows)
            row[name] = {"run_dir": str(run_dir), "first_step_at_target": first_at(eval_curve(rows, target_key), target),
                         "final_eval": summary["eval_mean_return"], "curve": curve}
            if "eval_success_rate" in summary:
                row[name]["final_success_rate"] = summary["eval_success_rate"]
        seeds.append(row)
        print(f"[3/5] seed {seed}: scratch final {row['scratch']['final_eval']:.2f}, "
              f"from bc final {row['from_bc']['final_eval']:.2f}", flush=True)

    def paired(policy) -> float:
        return float(demos.paired_returns(a.env, policy, a.paired_episodes, PAIRED_SEED).mean())

    paired_expert, paired_bc = paired(expert), paired(demos.policy_from_run(out / "bc")[1])
    for row in seeds:
        for name in ("scratch", "from_bc"):
            row[name]["final_paired"] = paired(demos.policy_from_run(row[name]["run_dir"], "latest")[1])
    print(f"[4/5] on the same {a.paired_episodes} start states: expert {paired_expert:.2f}, bc clone {paired_bc:.2f}",
          flush=True)
    medians = {name: {"first_step_at_target": median_steps([r[name]["first_step_at_target"] for r in seeds]),
                      "final_eval": statistics.median([r[name]["final_eval"] for r in seeds]),
                      "final_paired": statistics.median([r[name]["final_paired"] for r in seeds])}
               for name in ("scratch", "from_bc")}
    name = a.algo.upper()
    png = plot(out, a.env, name, target_return, traj.mean_return,
               bc_summary["eval_mean_return"],
               {f"{name} from scratch": [r["scratch"]["curve"] for r in seeds],
                f"{name} from the bc clone": [r["from_bc"]["curve"] for r in seeds]})
    result = {
        "env": a.env, "target": target, "target_metric": target_key, "rl_algo": a.algo, "rl_settings": source, "rl_steps": rl_steps,
        "eval_every": eval_every, "eval_episodes": a.eval_episodes,
        "init_reg_coef": a.init_reg_coef, "init_reg_decay_steps": decay,
        "expert": {"mean_return": traj.mean_return, "episodes": traj.num_episodes, "steps": len(traj),
                   "file": str(out / "demos.npz")},
        "bc": {"run_dir": str(out / "bc"), "eval_mean_return": bc_summary["eval_mean_return"],
               "best_eval_return": bc_summary["best_eval_return"], "epochs": bc_summary["epochs"]},
        "paired": {"episodes": a.paired_episodes, "first_seed": PAIRED_SEED, "expert": paired_expert, "bc": paired_bc},
        "seeds": seeds, "median": medians, "plot": str(png),
    }
    write_json_atomic(out / "pipeline.json", result)
    print_table(result)
    return result


def show(v: Any) -> str:
    return "None" if v is None else f"{v:,.0f}" if isinstance(v, (int, float)) and float(v).is_integer() else f"{v:.2f}"


def print_table(r: dict[str, Any]) -> None:
    metric = "success rate" if r["target_metric"] == SUCCESS_KEY else "return"
    print(f"\n[5/5] {r['env']}, target {metric} {r['target']}, {r['rl_algo']} {r['rl_steps']:,} steps ({r['rl_settings']}); "
          f"expert {r['expert']['mean_return']:.2f}, bc clone {r['bc']['eval_mean_return']:.2f}")
    p = r["paired"]
    print(f"final policies on {p['episodes']} paired start states: expert {p['expert']:.2f}, bc clone {p['bc']:.2f}")
    print(f"{'seed':>6} {'scratch: at target':>19} {'from bc: at target':>19} {'scratch: final':>15} {'from bc: final':>15}"
          f" {'scratch: paired':>16} {'from bc: paired':>16}")
    rows = [(str(s["seed"]), s) for s in r["seeds"]] + [("median", r["median"])]
    for name, s in rows:
        print(f"{name:>6} {show(s['scratch']['first_step_at_target']):>19} {show(s['from_bc']['first_step_at_target']):>19} "
              f"{show(s['scratch']['final_eval']):>15} {show(s['from_bc']['final_eval']):>15}"
              f" {show(s['scratch']['final_paired']):>16} {show(s['from_bc']['final_paired']):>16}")
    print(f"plot {r['plot']}; all of it in {Path(r['plot']).with_name('pipeline.json')}")


def main(argv: list[str] | None = None) -> int:
    try:
        run_pipeline(parse_args(argv))
    except UserError as e:
        print(f"pipeline: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
