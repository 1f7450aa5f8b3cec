"""The imitation issue's two offline claims, measured on paired episodes.

    python recipes/imitation/measure.py clone --env CartPole-v1 --seeds 1 2 3
    python recipes/imitation/measure.py clone --env Pendulum-v1 --seeds 1 2 3
    python recipes/imitation/measure.py mixed --env Pendulum-v1 --seeds 1 2 3

clone: records --demo-episodes expert episodes, clones them with bc once per seed, then plays
    the expert, the clones and a uniform random policy from the same --eval-episodes start
    states (seeds EVAL_SEED, EVAL_SEED+1, ...). Pairing matters on Pendulum, whose returns
    spread by +-70 with the start angle: 20 unpaired episodes would move a ratio by 10 points.
    Prints each clone's return, its ratio to the expert's (expert / clone where returns are
    costs, i.e. negative, so that 1 is as good as the expert and lower is worse either way) and
    its normalised score (R - random) / (expert - random), D4RL's measure.
mixed: a dataset of --demo-episodes expert episodes plus --random-episodes random ones, learnt
    from by bc and by td3_bc with the same seeds; both evaluated on the same start states.

Everything is written under --out (run folders and measure.json).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from rung.algos import bc, td3_bc
from rung.buffers import demos
from rung.envs.experts import get_expert
from rung.errors import UserError
from rung.run import write_json_atomic

# Demonstrations come from seeds 0.. and evaluation starts from these on, so no evaluated start
# state was demonstrated.
DEMO_SEED, EVAL_SEED = 0, 10_000


def paired_returns(env: str, policy: demos.PolicyFn, episodes: int) -> np.ndarray:
    return demos.paired_returns(env, policy, episodes, EVAL_SEED)


def ratio(clone: float, expert: float) -> float:
    """How close a clone comes to the expert, 1 meaning as good: clone/expert for rewards,
    expert/clone for costs (both negative)."""
    return clone / expert if expert > 0 else expert / clone


def score(r: float, expert: float, rand: float) -> float:
    return (r - rand) / (expert - rand)


def clone_runs(a: argparse.Namespace, data: Path, out: Path, tag: str) -> dict[int, Path]:
    runs = {}
    for seed in a.seeds:
        cfg = bc.Config(env=a.env, dataset=str(data), seed=seed, eval_episodes=10, run_dir=str(out / f"{tag}_seed{seed}"))
        runs[seed] = bc.train(cfg, force=True).run_dir
    return runs


def measure_clone(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    data = demos.save(demos.collect(a.env, get_expert(a.env), a.demo_episodes, seed=DEMO_SEED, num_envs=4,
                                    source="expert"), out / "demos.npz")
    runs = clone_runs(a, data, out, "bc")
    expert = float(paired_returns(a.env, get_expert(a.env), a.eval_episodes).mean())
    rand = float(paired_returns(a.env, demos.random_policy(a.env, 0), a.eval_episodes).mean())
    rows = []
    for seed, run_dir in runs.items():
        # The clone as trained (early-stopped on validation loss), not the checkpoint its env evaluations picked.
        r = float(paired_returns(a.env, demos.policy_from_run(run_dir, "latest")[1], a.eval_episodes).mean())
        rows.append({"seed": seed, "return": r, "ratio": ratio(r, expert), "score": score(r, expert, rand)})
    result = {"what": "clone", "env": a.env, "demo_episodes": a.demo_episodes, "eval_episodes": a.eval_episodes,
              "expert_return": expert, "random_return": rand, "clones": rows,
              "median_ratio": statistics.median(r["ratio"] for r in rows),
              "median_score": statistics.median(r["score"] for r in rows)}
    print(f"{a.env}: expert {expert:.2f}, random {rand:.2f} over the same {a.eval_episodes} start states; "
          f"bc from {a.demo_episodes} expert episodes:")
    for r in rows:
        print(f"  seed {r['seed']}: return {r['return']:8.2f}  ratio to expert {r['ratio']:.3f}  normalised score {r['score']:.3f}")
    print(f"  median ratio {result['median_ratio']:.3f}, median normalised score {result['median_score']:.3f}")
    return result


def measure_mixed(a: argparse.Namespace, out: Path) -> dict[str, Any]:
    expert_part = demos.collect(a.env, get_expert(a.env), a.demo_episodes, seed=DEMO_SEED, num_envs=4, source="expert")
    random_part = demos.collect(a.env, demos.random_policy(a.env, 1), a.random_episodes,
                                seed=DEMO_SEED + a.demo_episodes, num_envs=4, source="random")
    data = demos.save(demos.concatenate([expert_part, random_part]), out / "mixed.npz")
    bc_runs = clone_runs(a, data, out, "bc")
    rows = []
    for seed in a.seeds:
        cfg = td3_bc.Config(env=a.env, dataset=str(data), seed=seed, total_timesteps=a.td3_bc_steps,
                            eval_every=max(a.td3_bc_steps // 10, 1), eval_episodes=10,
                            run_dir=str(out / f"td3_bc_seed{seed}"))
        td3_dir = td3_bc.train(cfg, force=True).run_dir
        # Both final policies: bc's latest.pt holds the clone early stopping kept (as its best.pt
        # does), td3_bc's its last weights (its best.pt is picked by env evaluations).
        b = float(paired_returns(a.env, demos.policy_from_run(bc_runs[seed], "latest")[1], a.eval_episodes).mean())
        t = float(paired_returns(a.env, demos.policy_from_run(td3_dir, "latest")[1], a.eval_episodes).mean())
        rows.append({"seed": seed, "bc": b, "td3_bc": t})
    result = {"what": "mixed", "env": a.env, "expert_episodes": a.demo_episodes, "random_episodes": a.random_episodes,
              "dataset_mean_return": float(np.mean(np.concatenate([expert_part.returns(), random_part.returns()]))),
              "expert_part_return": expert_part.mean_return, "random_part_return": random_part.mean_return,
              "td3_bc_steps": a.td3_bc_steps, "eval_episodes": a.eval_episodes, "seeds": rows,
              "td3_bc_wins": sum(r["td3_bc"] > r["bc"] for r in rows)}
    print(f"{a.env}: {a.demo_episodes} expert episodes ({expert_part.mean_return:.2f}) + {a.random_episodes} random "
          f"({random_part.mean_return:.2f}); final policies over the same {a.eval_episodes} start states:")
    for r in rows:
        print(f"  seed {r['seed']}: bc {r['bc']:8.2f}  td3_bc {r['td3_bc']:8.2f}")
    print(f"  td3_bc above bc on {result['td3_bc_wins']} of {len(rows)} seeds; medians bc "
          f"{statistics.median(r['bc'] for r in rows):.2f}, td3_bc {statistics.median(r['td3_bc'] for r in rows):.2f}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["clone", "mixed"])
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--demo-episodes", type=int, default=20, help="expert episodes in the dataset (default 20)")
    p.add_argument("--random-episodes", type=int, default=20, help="mixed: random episodes added (default 20)")
    p.add_argument("--eval-episodes", type=int, default=50, help="paired start states evaluated (default 50)")
    p.add_argument("--td3-bc-steps", type=int, default=30_000, help="mixed: td3_bc gradient steps (default 30000)")
    p.add_argument("--out", help="output folder (default runs/imitation/measure_WHAT_ENV)")
    a = p.parse_args(argv)
    out = Path(a.out or f"runs/imitation/measure_{a.what}_{a.env}")
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = measure_clone(a, out) if a.what == "clone" else measure_mixed(a, out)
    except UserError as e:
        print(f"measure: error: {e}", file=sys.stderr)
        return 2
    write_json_atomic(out / "measure.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
