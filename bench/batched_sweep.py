"""Time to solved for several PPO settings on batched CartPole, in one process: a search for
settings on a given device (BENCHMARKS.md has the GPU search it ran).

    python bench/batched_sweep.py --device cuda \
        "num_envs=4096 num_steps=16 num_minibatches=4 update_epochs=4" \
        "num_envs=2048 num_steps=16 num_minibatches=2 update_epochs=4 learning_rate=1e-3" --seeds 1 2 3

Each setting is a list of NAME=VALUE pairs laid over the batched-cartpole-ppo preset (values are
read as `rung train --NAME VALUE` reads them); with none given, the preset alone is run. Every run
stops at its first evaluation >= 475 and reports that moment's wall-clock, counted from the start
of training, evaluations included (as bench/batched.py counts it). One process runs them all, so
only the first run pays the device's start-up: a warm-up run of the preset goes first and is not
reported. Medians per setting are printed last and written to bench/out/batched_sweep.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
import typing
from pathlib import Path

HERE = Path(__file__).resolve().parent


def parse_setting(text: str) -> dict:
    from rung.algos import ppo
    from rung.cli import _converter

    hints = typing.get_type_hints(ppo.Config)
    out = {}
    for pair in text.split():
        name, _, value = pair.partition("=")
        if name not in hints:
            raise SystemExit(f"unknown PPO config field {name!r} in setting {text!r}")
        out[name] = _converter(name, hints[name])(value)
    return out


def run(overrides: dict, seed: int, device: str, threads: int, budget: int) -> dict:
    from rung import presets
    from rung.algos import ppo

    p = presets.get("batched-cartpole-ppo")
    values = {**p.overrides, "total_timesteps": budget, **overrides}
    cfg = dataclasses.replace(ppo.Config(**values), seed=seed, device=device, torch_threads=threads,
                              stop_when_solved=True, run_dir=tempfile.mkdtemp(prefix="rung-sweep-"))
    t0 = time.perf_counter()
    s = ppo.train(cfg).summary
    return {"seed": seed, "solved_at_seconds": s["solved_at_seconds"], "solved_at_step": s["solved_at_step"],
            "wall_seconds": s["wall_seconds"], "process_seconds": round(time.perf_counter() - t0, 2),
            "final_eval": s["eval_mean_return"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("settings", nargs="*", help='e.g. "num_envs=4096 num_steps=16"; none: the preset as it is')
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--budget", type=int, default=2_000_000, help="env steps after which an unsolved run stops")
    p.add_argument("--confirm", type=int, nargs="*", default=[], metavar="SEED",
                   help="then run the setting with the lowest median again on these other seeds: the best of "
                        "several settings on the same seeds flatters itself, fresh seeds do not")
    p.add_argument("--out", type=Path, default=HERE / "out" / "batched_sweep.json")
    a = p.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    settings = a.settings or [""]
    parsed = [parse_setting(s) for s in settings]  # every typo refused before the first run
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu"
    print(f"device {a.device} ({name}), torch {torch.__version__}, {a.threads} torch thread(s)", flush=True)
    warm = run({}, 0, a.device, a.threads, a.budget)
    print(f"warm-up (preset, seed 0, not reported): {warm['solved_at_seconds']} s", flush=True)
    results = []
    for text, overrides in zip(settings, parsed):
        rows = []
        for seed in a.seeds:
            r = run(overrides, seed, a.device, a.threads, a.budget)
            rows.append(r)
            print(f"  [{text or 'preset'}] seed {seed}: solved at {r['solved_at_seconds']} s, step "
                  f"{r['solved_at_step']} (run {r['wall_seconds']} s, {r['process_seconds']} s with set-up and final "
                  "evaluation)", flush=True)
        times = [r["solved_at_seconds"] for r in rows]
        med = statistics.median(times) if None not in times else None
        results.append({"setting": text or "preset", "runs": rows, "median_seconds": med})
    print("medians (seconds to eval >= 475; None: a seed did not solve within the budget):")
    for r in results:
        print(f"  {r['median_seconds']!s:>6}  {r['setting']}")
    solved = [(r["median_seconds"], i) for i, r in enumerate(results) if r["median_seconds"] is not None]
    confirm = None
    if a.confirm and solved:
        best = min(solved)[1]
        rows = [run(parsed[best], seed, a.device, a.threads, a.budget) for seed in a.confirm]
        times = [r["solved_at_seconds"] for r in rows]
        confirm = {"setting": results[best]["setting"], "runs": rows,
                   "median_seconds": statistics.median(times) if None not in times else None}
        print(f"confirmation of [{confirm['setting']}] on seeds {a.confirm}: " + ", ".join(
            f"{t} s" for t in times) + f"; median {confirm['median_seconds']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"device": a.device, "device_name": name, "torch": torch.__version__,
                                 "threads": a.threads, "results": results, "confirmation": confirm}, indent=2))


if __name__ == "__main__":
    main()
