"""Batched tensor envs against gymnasium, and PPO wall-clock to solved, in one run.

    python bench/batched.py                     # CPU, about 12 minutes on 2 cores
    python bench/batched.py --device cuda       # on a GPU machine (see bench/gpu_check.sh)

(a) Env steps/s of gymnasium's SyncVectorEnv CartPole-v1 and of rung's batched CartPole-v1 at
    1, 64, 1024, 4096 and 16384 envs, random actions, auto-reset included; plotted against the
    number of envs (bench/out/batched_throughput.png). rung is measured eager and, at 4096 envs,
    compiled with torch.compile (the compile time is reported apart).
(b) Wall-clock from the start of training to the first evaluation >= 475 (10 deterministic
    episodes every 5k steps for SB3 and rung on gymnasium CartPole, every 16k steps on the batched
    env): Stable-Baselines3 PPO with RL Zoo's CartPole settings (its evaluation time taken off its
    clock), rung PPO on gymnasium CartPole (cartpole-ppo preset), rung PPO on batched CartPole
    (batched-cartpole-ppo preset; everything from the start of training counted, evaluations too).
    Every (framework, seed) runs --repeats times in rounds; as timeit does, the fastest round
    counts (the training is the same every round, only the machine's interference differs).
    Medians over the seeds; ratios printed last.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
COUNTS = (1, 64, 1024, 4096, 16384)


def gym_steps_per_second(n: int, seconds: float = 2.0, mode: str = "sync") -> float:
    """mode "sync": SyncVectorEnv, n copies of the Python env (the issue's baseline); mode
    "vector_entry_point": gymnasium's own numpy-vectorised CartPoleVectorEnv, which resets an ended
    env on the next step and keeps no final observation (less work a step than rung's)."""
    import gymnasium as gym
    import numpy as np

    env = gym.make_vec("CartPole-v1", num_envs=n, vectorization_mode=mode)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        env.step(rng.integers(0, 2, size=n))
        steps += n
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def rung_steps_per_second(n: int, device: str, compile: bool | str = False, seconds: float = 2.0) -> tuple[float, float]:
    import torch

    from rung.envs import batched

    env = batched.make("CartPole-v1", n, device=device, seed=0, compile=bool(compile))
    if isinstance(compile, str):
        # A probe, not an option of rung's: torch.compile's CUDA-graph mode replays the whole
        # step as one launch, worth knowing before rung offers it.
        graphed = torch.compile(env._transition, mode=compile, dynamic=False)

        def step_fn(*args):
            # Each replay overwrites the last one's outputs, which the env keeps (its state is the
            # next step's input; for CartPole the observation is that same tensor): copy them out.
            torch.compiler.cudagraph_mark_step_begin()
            return tuple(t.clone() for t in graphed(*args))

        env._step_fn = step_fn
    env.reset()
    g = torch.Generator(device=device).manual_seed(0)
    actions = [torch.randint(0, 2, (n,), generator=g, device=device) for _ in range(16)]
    t0 = time.perf_counter()
    for i in range(6 if isinstance(compile, str) else 3):  # warm-up (compilation; CUDA-graph recording)
        env.step(actions[i])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    warm = time.perf_counter() - t0
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a in actions:
            env.step(a)
        sync()
        steps += n * len(actions)
    return steps / (time.perf_counter() - t0), warm


def throughput(device: str, out: Path) -> dict:
    rows = {"gymnasium": {}, "gymnasium_vector": {}, "rung": {}}
    for n in COUNTS:
        rows["gymnasium"][n] = gym_steps_per_second(n)
        rows["gymnasium_vector"][n] = gym_steps_per_second(n, mode="vector_entry_point")
        rows["rung"][n], _ = rung_steps_per_second(n, device)
        print(f"  {n:>6} envs: gymnasium SyncVectorEnv {rows['gymnasium'][n]:>12,.0f}   gymnasium CartPoleVectorEnv "
              f"{rows['gymnasium_vector'][n]:>12,.0f}   rung {rows['rung'][n]:>14,.0f} steps/s", flush=True)
    compiled, warm = rung_steps_per_second(4096, device, compile=True)
    rows["rung_compiled_4096"], rows["compile_seconds"] = compiled, warm
    print(f"  4096 envs, torch.compile: {compiled:,.0f} steps/s (compile and warm-up {warm:.1f} s)", flush=True)
    if device.startswith("cuda"):
        for n in (1024, 4096, 16384):
            try:
                graphed, warm = rung_steps_per_second(n, device, compile="reduce-overhead")
            except Exception as e:  # a probe: its failure is a finding, not the end of the bench
                print(f"  {n} envs, torch.compile mode reduce-overhead (CUDA graphs) failed: {str(e).splitlines()[0][:200]}")
                continue
            rows[f"rung_cudagraphs_{n}"] = graphed
            print(f"  {n} envs, torch.compile mode reduce-overhead (CUDA graphs): {graphed:,.0f} steps/s "
                  f"(eager {rows['rung'][n]:,.0f}; compile and warm-up {warm:.1f} s)", flush=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, series in (("gymnasium SyncVectorEnv", rows["gymnasium"]),
                         ("gymnasium CartPoleVectorEnv (numpy)", rows["gymnasium_vector"]),
                         (f"rung batched ({device})", rows["rung"])):
        ax.plot(list(series), list(series.values()), "o-", label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of envs")
    ax.set_ylabel("env steps per second")
    ax.set_title("CartPole-v1, random actions, auto-reset included")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    return rows


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


def rung_batched(seed: int, device: str, threads: int) -> dict:
    import dataclasses
    import tempfile

    from rung import presets
    from rung.algos import ppo

    p = presets.get("batched-cartpole-ppo")
    cfg = dataclasses.replace(ppo.Config(**p.overrides), seed=seed, device=device, torch_threads=threads,
                              stop_when_solved=True, run_dir=tempfile.mkdtemp(prefix="rung-batched-"))
    s = ppo.train(cfg).summary
    return {"framework": "rung-batched", "seed": seed, "solved_at_seconds": s["solved_at_seconds"],
            "solved_at_step": s["solved_at_step"], "final_eval": s["eval_mean_return"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the throughput figures and every PPO run")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-solve", action="store_true")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds of part (b); each seed's fastest round counts (1: a single shot, at the mercy of "
                        "the machine's slow spells, which moved a 0.3 s run by up to 1.7x here)")
    p.add_argument("--child", choices=["rung-batched"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.repeats < 1:
        p.error(f"--repeats must be at least 1, got {a.repeats}")
    if a.child:
        import torch

        torch.set_num_threads(a.threads)
        print("RESULT " + json.dumps(rung_batched(a.seed, a.device, a.threads)), flush=True)
        return
    import torch

    # The same thread count for the throughput figures as for every PPO run below.
    torch.set_num_threads(a.threads)
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"device {a.device}" + (f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else "")
          + f", python {platform.python_version()}, torch {torch.__version__}, date {date.today()}")
    if not a.skip_throughput:
        print("(a) env steps/s, CartPole-v1")
        rows = throughput(a.device, out_dir / "batched_throughput.png")
        best_gym = max(rows["gymnasium"].values())
        print(f"  rung at 4096 envs / SyncVectorEnv's best (the issue's baseline): {rows['rung'][4096] / best_gym:.0f}x "
              f"eager, {rows['rung_compiled_4096'] / best_gym:.0f}x compiled "
              f"({rows['rung'][4096]:,.0f} and {rows['rung_compiled_4096']:,.0f} vs {best_gym:,.0f} steps/s)")
        vec = rows["gymnasium_vector"][4096]
        print(f"  rung at 4096 envs / gymnasium's numpy CartPoleVectorEnv at 4096: {rows['rung'][4096] / vec:.2f}x eager, "
              f"{rows['rung_compiled_4096'] / vec:.2f}x compiled ({vec:,.0f} steps/s); plot {out_dir / 'batched_throughput.png'}")
    if a.skip_solve:
        return
    print(f"(b) wall-clock to eval >= 475, seeds {a.seeds}, torch threads {a.threads}")
    names = ("sb3", "rung-gym", "rung-batched")
    runs: dict[tuple[str, int], list[dict]] = {(name, seed): [] for name in names for seed in a.seeds}
    # Rounds outermost, so a slow spell of the machine falls on every framework alike rather than
    # on all of one framework's runs.
    for rnd in range(a.repeats):
        for seed in a.seeds:
            for name in names:
                if name == "rung-batched":
                    args = [__file__, "--child", "rung-batched", "--seed", str(seed), "--device", a.device,
                            "--threads", str(a.threads)]
                else:
                    args = [str(HERE / "classic.py"), "--child", "sb3" if name == "sb3" else "rung", "--seed", str(seed),
                            "--threads", str(a.threads)]
                r = run_child(args)
                runs[name, seed].append(r)
                of = f" (round {rnd + 1} of {a.repeats})" if a.repeats > 1 else ""
                print(f"  {name:>12} seed {seed}{of}: solved at {r['solved_at_seconds']} s", flush=True)

    def fastest(rs: list[dict]) -> dict:
        """A seed's run is the same training every round (the same seed on the CPU), so rounds
        differ only by the machine's interference: the fastest is the framework's own time."""
        solved = [r for r in rs if r["solved_at_seconds"] is not None]
        best = dict(min(solved, key=lambda r: r["solved_at_seconds"]) if solved else rs[0])
        best["rounds_solved_at_seconds"] = [r["solved_at_seconds"] for r in rs]
        return best

    results = {name: [fastest(runs[name, seed]) for seed in a.seeds] for name in names}
    if a.repeats > 1:
        for name in names:
            print(f"  {name:>12} fastest of {a.repeats} rounds, seeds {a.seeds}: "
                  f"{' / '.join(str(r['solved_at_seconds']) for r in results[name])} s")

    def median(name: str) -> float | None:
        vals = [r["solved_at_seconds"] for r in results[name] if r["solved_at_seconds"] is not None]
        return statistics.median(vals) if len(vals) == len(results[name]) else None

    meds = {name: median(name) for name in results}
    for name, m in meds.items():
        print(f"  median seconds to solved, {name}: {m if m is not None else 'not solved by every seed'}")
    if meds["sb3"] and meds["rung-batched"]:
        print(f"ratio sb3 / rung-batched: {meds['sb3'] / meds['rung-batched']:.1f}x")
    if meds["sb3"] and meds["rung-gym"]:
        print(f"ratio sb3 / rung-gym: {meds['sb3'] / meds['rung-gym']:.1f}x")
    (out_dir / "batched.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
