"""Measure presets over seeds: the figures behind BENCHMARKS.md's learning table.

    python bench/presets.py --preset cartpole-ppo --seeds 1 2 3
    python bench/presets.py --preset cartpole-reinforce --seeds 1 2 3 --set total_timesteps=500000

Each seed is a normal `rung train` run (in-process) whose folder lands in bench/out/; the table
prints when solved (first periodic eval at or above the target), the final eval and wall-clock.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

import typing

from rung import algos, presets
from rung.cli import _converter
from rung.logging import read_metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides")
    p.add_argument("--out", default="bench/out")
    p.add_argument("--threshold", type=float, help="also report the first eval at or above this return")
    a = p.parse_args()
    preset = presets.get(a.preset)
    module = algos.get(preset.algo)
    hints = typing.get_type_hints(module.Config)
    overrides = {}
    for item in a.set:
        k, v = item.split("=", 1)
        overrides[k] = _converter(k, hints[k])(v)
    rows = []
    for seed in a.seeds:
        run_dir = Path(a.out) / a.preset / f"seed{seed}"
        cfg = dataclasses.replace(module.Config(**preset.overrides), seed=seed, run_dir=str(run_dir), **overrides)
        res = module.train(cfg, force=True)
        s = res.summary
        rows.append(s)
        print(json.dumps({k: s[k] for k in ("seed", "eval_mean_return", "solved_at_step", "solved_at_seconds", "wall_seconds")}), flush=True)
    print(f"\n{a.preset} ({preset.algo} on {rows[0]['env']}), target {preset.target:g}, overrides {overrides or 'none'}")
    print(f"{'seed':>4} {'final eval':>11} {'best eval':>10} {'solved at step':>15} {'solved at s':>12} {'wall s':>8}")
    for s in rows:
        print(f"{s['seed']:>4} {s['eval_mean_return']:>11.1f} {s['best_eval_return']:>10.1f} {str(s['solved_at_step']):>15} "
              f"{str(s['solved_at_seconds']):>12} {s['wall_seconds']:>8.1f}")
    if a.threshold is not None:
        for seed in a.seeds:
            evals = [r for r in read_metrics(Path(a.out) / a.preset / f"seed{seed}") if "eval/mean_return" in r]
            hit = next((r for r in evals if r["eval/mean_return"] >= a.threshold), None)
            print(f"seed {seed}: first eval >= {a.threshold:g} at step {hit['step'] if hit else None}"
                  f" ({hit['eval/mean_return'] if hit else '-'})")
    solved = [s["solved_at_step"] for s in rows if s["solved_at_step"] is not None]
    print(f"solved {len(solved)}/{len(rows)}" + (f"; median solved step {statistics.median(solved):,.0f}" if solved else ""))
    print(f"machine: {platform.machine()} {platform.system()}, python {platform.python_version()}, date {date.today()}")
    out = Path(a.out) / f"{a.preset}.json"
    out.write_text(json.dumps({"preset": a.preset, "overrides": overrides, "runs": rows}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
