"""rung PPO against Stable-Baselines3 PPO on CartPole-v1, same hyperparameters, same run.

    python bench/classic.py                  # 3 seeds each, about 10 minutes on 2 cores
    python bench/classic.py --seeds 1        # quicker

Settings are RL Zoo's tuned CartPole-v1 PPO (rung's cartpole-ppo preset): 8 envs x 32 steps,
one 256-sample minibatch, 20 epochs, gamma 0.98, GAE lambda 0.8, learning rate and clip range
annealed linearly from 1e-3 and 0.2, vf_coef 0.5 on the squared value error (the same loss in
both), 64x64 tanh actor and critic, 100k steps. Each framework
runs in its own child process with the same torch thread count. Both evaluate 10 deterministic
episodes every 5k steps; SB3's evaluation time is taken off its clock, rung's is left on (so
rung's figures are conservative). Reported per seed: wall-clock to the first evaluation >= 475,
training env steps per second, final evaluation; then medians and the rung/SB3 ratios.
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

TOTAL, EVAL_EVERY, EVAL_EPISODES, TARGET = 100_000, 5_000, 10, 475.0


def run_sb3(seed: int) -> dict:
    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from rung.run import FINAL_ROUND, evaluation_seed

    def linear(start: float):
        return lambda progress_remaining: progress_remaining * start

    class Clock(BaseCallback):
        """Training-only clock: evaluation time is subtracted."""

        def __init__(self):
            super().__init__()
            self.eval_seconds, self.next_eval, self.solved_at, self.start = 0.0, EVAL_EVERY, None, time.perf_counter()
            self.eval_env = gym.make("CartPole-v1")
            self.last_eval = None
            self.round = 0

        def evaluate(self, eval_round: int) -> float:
            # rung's start states for the same round, so both frameworks are judged on the same episodes.
            first = evaluation_seed(seed, EVAL_EPISODES, eval_round)
            returns = []
            for ep in range(EVAL_EPISODES):
                obs, _ = self.eval_env.reset(seed=first + ep)
                done, total = False, 0.0
                while not done:
                    action, _ = self.model.predict(obs, deterministic=True)
                    obs, r, term, trunc, _ = self.eval_env.step(int(action))
                    total += r
                    done = term or trunc
                returns.append(total)
            return float(np.mean(returns))

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.next_eval += EVAL_EVERY
                t = time.perf_counter()
                self.last_eval = self.evaluate(self.round)
                self.round += 1
                self.eval_seconds += time.perf_counter() - t
                if self.last_eval >= TARGET and self.solved_at is None:
                    self.solved_at = time.perf_counter() - self.start - self.eval_seconds
            return True

    t0 = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0,
                learning_rate=linear(1e-3), clip_range=linear(0.2), seed=seed, verbose=0, device="cpu")
    clock = Clock()
    model.learn(TOTAL, callback=clock)
    train_seconds = time.perf_counter() - clock.start - clock.eval_seconds
    final = clock.evaluate(FINAL_ROUND)
    if final >= TARGET and clock.solved_at is None:  # rung's rule: its final evaluation counts too
        clock.solved_at = train_seconds
    return {"framework": "sb3", "seed": seed, "solved_at_seconds": clock.solved_at, "train_seconds": train_seconds,
            "steps": model.num_timesteps, "steps_per_second": model.num_timesteps / train_seconds,
            "final_eval": final, "setup_seconds": clock.start - t0}


def run_rung(seed: int) -> dict:
    import torch

    from rung.algos import ppo

    out = tempfile.mkdtemp(prefix="rung-bench-")
    # The preset defaults are the same RL Zoo settings; only seed, evaluation and folder are set.
    cfg = ppo.Config(seed=seed, total_timesteps=TOTAL, eval_every=EVAL_EVERY, eval_episodes=EVAL_EPISODES, run_dir=out,
                     torch_threads=torch.get_num_threads())  # Run sets the thread count from the config
    s = ppo.train(cfg).summary
    return {"framework": "rung", "seed": seed, "solved_at_seconds": s["solved_at_seconds"], "train_seconds": s["wall_seconds"],
            "steps": s["total_timesteps"], "steps_per_second": s["total_timesteps"] / s["wall_seconds"],
            "final_eval": s["eval_mean_return"]}


def child(framework: str, seed: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    res = run_sb3(seed) if framework == "sb3" else run_rung(seed)
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--threads", type=int, default=1, help="torch threads for both frameworks")
    p.add_argument("--child", choices=["sb3", "rung"], help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        child(a.child, a.seed, a.threads)
        return
    import stable_baselines3
    import torch

    results: dict[str, list[dict]] = {"sb3": [], "rung": []}
    for seed in a.seeds:
        for fw in ("sb3", "rung"):
            proc = subprocess.run([sys.executable, __file__, "--child", fw, "--seed", str(seed), "--threads", str(a.threads)],
                                  capture_output=True, text=True, check=True)
            line = next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))
            res = json.loads(line[7:])
            results[fw].append(res)
            print(f"{fw:>5} seed {seed}: solved at {res['solved_at_seconds']} s, {res['steps_per_second']:,.0f} steps/s, "
                  f"final eval {res['final_eval']:.1f}", flush=True)

    def med(fw, key):
        # A seed that never solved has no time; dropping it would flatter that framework's median.
        vals = [r[key] for r in results[fw]]
        return None if any(v is None for v in vals) else statistics.median(vals)

    print(f"\nCartPole-v1 PPO, {TOTAL:,} steps, seeds {a.seeds}, torch threads {a.threads}")
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, torch {torch.__version__}, "
          f"stable-baselines3 {stable_baselines3.__version__}, date {date.today()}")
    for fw in ("sb3", "rung"):
        solved = sum(r["solved_at_seconds"] is not None for r in results[fw])
        print(f"{fw:>5}: median seconds to solved {med(fw, 'solved_at_seconds')}, solved {solved}/{len(a.seeds)}, "
              f"median steps/s {med(fw, 'steps_per_second'):,.0f}")
    st_sb3, st_rung = med("sb3", "solved_at_seconds"), med("rung", "solved_at_seconds")
    if st_sb3 and st_rung:
        print(f"ratio wall-clock to solved, sb3 / rung: {st_sb3 / st_rung:.2f}x")
    print(f"ratio steps/s, rung / sb3: {med('rung', 'steps_per_second') / med('sb3', 'steps_per_second'):.2f}x")


if __name__ == "__main__":
    main()
