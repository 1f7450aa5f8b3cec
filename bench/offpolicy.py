"""rung SAC (or TD3) against Stable-Baselines3's, same hyperparameters, same run.

    python bench/offpolicy.py                       # 3 Pendulum seeds each + HalfCheetah; about two hours on 2 cores
    python bench/offpolicy.py --seeds 1 --skip-cheetah --precisions bf16-mixed --compile on
    python bench/offpolicy.py --algo td3 --skip-cheetah --precisions bf16-mixed
    python bench/offpolicy.py --device cuda --seeds 1 --steps 3000 --skip-cheetah   # on a GPU (bench/gpu_check.sh)

(a) Pendulum-v1, RL Zoo's SAC settings (rung's pendulum-sac preset): 20k steps, learning rate
    1e-3, buffer 1M, batch 256, tau 0.005, gamma 0.99, 100 random steps, one gradient step per env
    step, automatic entropy tuning, two 256x256 critics and a 256x256 actor. Reported per seed:
    gradient updates per second and env steps per second over the whole training loop (env
    stepping, updates and logging, no evaluation), and the final return (10 deterministic
    episodes). Then medians, the rung/SB3 ratios, and whether rung's final returns lie within
    the spread of SB3's seeds. rung runs once per --precisions entry: float32, as SB3 computes,
    and bf16-mixed (its updates' matrix products in bfloat16, everything else float32); and each
    of those eager, compiled (`--compile`: each gradient step one torch.compile'd graph), or both.
    A compiled run's clock includes its compile time (seconds with inductor's on-disk cache warm,
    longer on the machine's first compile).
(b) HalfCheetah-v5, SAC's default settings (learning rate 3e-4, the rest as above), 10k steps with
    one gradient step per env step after 100 random ones: env steps per second.

--algo td3 runs TD3 instead: on Pendulum RL Zoo's settings (rung's pendulum-td3 preset: 400x300
networks, learning rate 1e-3, gamma 0.98, buffer 200k, 10k random steps, exploration noise 0.1;
so 10k updates in 20k steps), on HalfCheetah learning rate 1e-3 with 256x256 networks and 100
random steps, the rest as SAC's.

Each framework runs in its own child process with one torch thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date

EVAL_EPISODES = 10


def settings(algo: str, env_id: str, lr: float) -> dict:
    """The hyperparameters both frameworks run with, in SB3's names."""
    common = dict(learning_rate=lr, learning_starts=100, batch_size=256, buffer_size=1_000_000, tau=0.005, gamma=0.99,
                  train_freq=1, gradient_steps=1, hidden=(256, 256))
    if algo == "td3" and env_id == "Pendulum-v1":
        return {**common, "gamma": 0.98, "buffer_size": 200_000, "learning_starts": 10_000, "hidden": (400, 300)}
    return common


def sb3_run(algo: str, env_id: str, seed: int, steps: int, lr: float, device: str = "cpu") -> dict:
    import gymnasium as gym
    import numpy as np
    import stable_baselines3
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    kw = settings(algo, env_id, lr)
    hidden = list(kw.pop("hidden"))
    if algo == "td3":
        act_dim = gym.make(env_id).action_space.shape[0]
        model = TD3("MlpPolicy", env_id, **kw, action_noise=NormalActionNoise(np.zeros(act_dim), 0.1 * np.ones(act_dim)),
                    policy_kwargs={"net_arch": hidden}, seed=seed, verbose=0, device=device)
    else:
        model = SAC("MlpPolicy", env_id, **kw, policy_kwargs={"net_arch": hidden}, seed=seed, verbose=0, device=device)
    t0 = time.perf_counter()
    model.learn(steps)
    wall = time.perf_counter() - t0
    from rung.run import FINAL_ROUND, evaluation_seed

    env = gym.make(env_id)
    returns = []
    # The start states of rung's final evaluation, so that the final returns compare like with like.
    first = evaluation_seed(seed, EVAL_EPISODES, FINAL_ROUND)
    for ep in range(EVAL_EPISODES):
        obs, _ = env.reset(seed=first + ep)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, r, term, trunc, _ = env.step(action)
            total += float(r)
            done = term or trunc
        returns.append(total)
    return {"framework": "sb3", "version": stable_baselines3.__version__, "seed": seed, "wall": wall,
            "updates": int(model._n_updates), "steps": steps, "final_return": float(np.mean(returns))}


def rung_run(algo: str, env_id: str, seed: int, steps: int, lr: float, device: str = "cpu", precision: str = "float32",
             compile: bool = False) -> dict:
    from rung import algos
    from rung.logging import read_metrics

    module = algos.get(algo)
    kw = settings(algo, env_id, lr)
    kw["hidden_sizes"] = kw.pop("hidden")
    if algo == "td3":
        kw["exploration_noise"] = 0.1  # as SB3's NormalActionNoise: both add it to the action scaled to [-1, 1]
    cfg = module.Config(env=env_id, seed=seed, total_timesteps=steps, **kw, eval_every=0, precision=precision,
                        device=device, compile=compile, log_every=steps, eval_episodes=EVAL_EPISODES,
                        run_dir=tempfile.mkdtemp(prefix="rung-offpolicy-"))
    result = module.train(cfg)
    # The log line at the last step is written before the final evaluation: its wall-clock and
    # update count cover the training loop alone.
    last = [r for r in read_metrics(result.run_dir) if "charts/updates" in r][-1]
    return {"framework": "rung", "precision": precision, "compile": compile, "seed": seed, "wall": last["wall"], "updates": int(last["charts/updates"]),
            "steps": steps, "final_return": result.summary["eval_mean_return"]}


def child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])


PRECISIONS = ("float32", "bf16-mixed")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--algo", choices=["sac", "td3"], default="sac")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="rung's runs, one per precision (SB3 runs in float32)")
    p.add_argument("--compile", choices=["off", "on", "both"], default="both",
                   help="rung's runs with the eager update, the compiled one (--compile), or each precision both ways")
    p.add_argument("--cheetah-steps", type=int, default=10_000)
    p.add_argument("--skip-cheetah", action="store_true")
    p.add_argument("--device", default="cpu", help="both frameworks' networks and updates (default cpu)")
    p.add_argument("--child", choices=["sb3", "rung"], help=argparse.SUPPRESS)
    p.add_argument("--env", default="Pendulum-v1", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    p.add_argument("--lr", type=float, default=1e-3, help=argparse.SUPPRESS)
    p.add_argument("--precision", choices=PRECISIONS, default="float32", help=argparse.SUPPRESS)
    p.add_argument("--compiled", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    if a.child:
        extra = {} if a.child == "sb3" else {"precision": a.precision, "compile": a.compiled}
        fn = sb3_run if a.child == "sb3" else rung_run
        print("RESULT " + json.dumps(fn(a.algo, a.env, a.seed, a.steps, a.lr, a.device, **extra)), flush=True)
        return
    print(f"machine: {platform.processor() or platform.machine()}, 1 torch thread, device {a.device}"
          + (f" ({torch.cuda.get_device_name()})" if a.device.startswith("cuda") else "")
          + f", python {platform.python_version()}, torch {torch.__version__}, date {date.today()}")
    name = a.algo.upper()
    print(f"(a) {name} on Pendulum-v1, {a.steps:,} steps, seeds {a.seeds}")
    # One label per framework and precision; each runs every seed in turn, so machine noise over
    # the bench's hour falls on all of them alike.
    runs = {"sb3": ["--child", "sb3", "--algo", a.algo, "--device", a.device],
            **{f"rung {pr}{' compiled' if c else ''}": ["--child", "rung", "--algo", a.algo, "--precision", pr,
                                                         "--device", a.device,
                                                         *(["--compiled"] if c else [])]
               for pr in a.precisions for c in {"off": [False], "on": [True], "both": [False, True]}[a.compile]}}
    rows: dict[str, list[dict]] = {label: [] for label in runs}
    for seed in a.seeds:
        for label, flags in runs.items():
            r = child([*flags, "--env", "Pendulum-v1", "--seed", str(seed), "--steps", str(a.steps), "--lr", "1e-3"])
            rows[label].append(r)
            print(f"  {label:>24} seed {seed}: {r['updates'] / r['wall']:7.1f} updates/s  {r['steps'] / r['wall']:7.1f} "
                  f"steps/s  final return {r['final_return']:8.1f}  ({r['wall']:.0f} s)", flush=True)
    med = {label: {"ups": statistics.median(r["updates"] / r["wall"] for r in rs),
                   "sps": statistics.median(r["steps"] / r["wall"] for r in rs),
                   "ret": statistics.median(r["final_return"] for r in rs)} for label, rs in rows.items()}
    for label, m in med.items():
        print(f"  median {label:>24}: {m['ups']:.1f} updates/s, {m['sps']:.1f} steps/s, final return {m['ret']:.1f}")
    lo, hi = min(r["final_return"] for r in rows["sb3"]), max(r["final_return"] for r in rows["sb3"])
    print(f"  SB3 final returns span [{lo:.1f}, {hi:.1f}]")
    for label in rows:
        if label == "sb3":
            continue
        inside = all(lo <= r["final_return"] <= hi for r in rows[label])
        print(f"{label}: final returns all inside SB3's span: {inside}; median "
              f"{'>=' if med[label]['ret'] >= med['sb3']['ret'] else '<'} SB3's")
        print(f"{label}: ratio rung/SB3 updates per second: {med[label]['ups'] / med['sb3']['ups']:.2f}x, "
              f"env steps per second: {med[label]['sps'] / med['sb3']['sps']:.2f}x")
    result = {"pendulum": rows}
    if not a.skip_cheetah:
        print(f"(b) {name} on HalfCheetah-v5, {a.cheetah_steps:,} steps, one gradient step per env step")
        cheetah = {}
        for label, flags in runs.items():
            lr = "3e-4" if a.algo == "sac" else "1e-3"
            r = child([*flags, "--env", "HalfCheetah-v5", "--seed", "1", "--steps", str(a.cheetah_steps), "--lr", lr])
            cheetah[label] = r
            print(f"  {label:>24}: {r['steps'] / r['wall']:.1f} steps/s ({r['wall']:.0f} s, {r['updates']:,} updates)",
                  flush=True)
        sb3 = cheetah["sb3"]["steps"] / cheetah["sb3"]["wall"]
        for label, r in cheetah.items():
            if label != "sb3":
                print(f"{label}: ratio rung/SB3 HalfCheetah steps per second: {r['steps'] / r['wall'] / sb3:.2f}x")
        result["halfcheetah"] = cheetah
    from pathlib import Path

    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / f"offpolicy{'' if a.algo == 'sac' else '_' + a.algo}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
