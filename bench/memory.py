"""Resident memory of a long PPO CartPole run: no growth with run length.

    python bench/memory.py                       # 1M steps with the cartpole-ppo preset settings

Reads `sys/rss_mb` (logged every iteration from /proc/self/statm) from the run's metrics.jsonl
and compares the value at 100k steps with the value at the end.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from datetime import date
from pathlib import Path

from rung.algos import ppo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--total-timesteps", type=int, default=1_000_000)
    p.add_argument("--early", type=int, default=100_000, help="the step to compare the end against")
    a = p.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="rung-mem-"))
    cfg = ppo.Config(total_timesteps=a.total_timesteps, eval_every=100_000, run_dir=str(run_dir))
    ppo.train(cfg)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rss = [(r["step"], r["sys/rss_mb"]) for r in rows if "sys/rss_mb" in r]
    early = next(v for s, v in rss if s >= a.early)
    end = rss[-1][1]
    peak = max(v for _, v in rss)
    print(f"PPO CartPole-v1, {rss[-1][0]:,} steps: RSS {early:.1f} MiB at {a.early:,} steps, {end:.1f} MiB at the end "
          f"(peak {peak:.1f}); end / early = {end / early:.3f} ({(end / early - 1) * 100:+.1f}%)")
    print(f"machine: {platform.machine()}, python {platform.python_version()}, date {date.today()}")


if __name__ == "__main__":
    main()
