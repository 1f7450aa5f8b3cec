"""Learning tests: the presets reach their published targets within calibrated budgets.

Budgets come from bench/presets.py runs over 3 seeds (BENCHMARKS.md), with margin: the test
fails if learning breaks, not if a seed is a little unlucky. Each stops at the first evaluation
at or above the target (stop_when_solved), so a healthy run ends early."""

import pytest

from rung import algos, presets

pytestmark = pytest.mark.slow


def solve(preset: str, budget: int, tmp_path, **overrides):
    p = presets.get(preset)
    module = algos.get(p.algo)
    cfg = module.Config(**{**p.overrides, "total_timesteps": budget, "stop_when_solved": True,
                           "run_dir": str(tmp_path / preset), **overrides})
    return module.train(cfg).summary


def test_ppo_solves_cartpole_within_100k_steps(tmp_path):
    # Calibrated: solved at 20,224 / 30,208 / 20,224 steps for seeds 1, 2, 3 (eval every 10k).
    s = solve("cartpole-ppo", 100_000, tmp_path, eval_every=5_000)
    assert s["solved_at_step"] is not None and s["solved_at_step"] <= 100_000
    assert s["eval_mean_return"] >= 475


def test_reinforce_solves_cartpole_within_150k_steps(tmp_path):
    # Calibrated: solved at 81,920 / 90,112 / 81,920 steps for seeds 1, 2, 3 (eval every 10k).
    s = solve("cartpole-reinforce", 150_000, tmp_path, eval_every=5_000)
    assert s["solved_at_step"] is not None


def test_ppo_solves_acrobot_within_120k_steps(tmp_path):
    # Calibrated: solved at 81,920 / 53,248 / 12,288 steps for seeds 1, 2, 3 (eval every 10k).
    s = solve("acrobot-ppo", 120_000, tmp_path, eval_every=4_096)
    assert s["solved_at_step"] is not None


def test_ppo_solves_batched_cartpole_within_100k_steps(tmp_path):
    # Calibrated (bench/batched_sweep.py --seeds 40 ... 59, the preset of 2026-11-28): solved at
    # 16,384 steps on 15 seeds of 20 and 32,768 on the other five (eval every 16,384).
    s = solve("batched-cartpole-ppo", 100_000, tmp_path)
    assert s["solved_at_step"] is not None


@pytest.mark.parametrize("precision", ["float32", "bf16-mixed"])
def test_sac_solves_pendulum_with_small_networks(tmp_path, precision):
    # CI-sized pendulum-sac: 64x64 networks instead of 256x256, a quarter of the compute.
    # Calibrated (bench/presets.py --preset pendulum-sac --set hidden_sizes=64,64 total_timesteps=8000
    # eval_every=1000 [precision=bf16-mixed]): solved at 4,000 / 5,000 / 4,000 steps for seeds 1, 2, 3,
    # in float32 and in bf16-mixed alike (final -129.4 / -122.8 / -182.5 in bf16-mixed).
    s = solve("pendulum-sac", 8_000, tmp_path, hidden_sizes=(64, 64), eval_every=1_000, precision=precision)
    assert s["solved_at_step"] is not None


def test_sac_her_reaches_fetchreach_goals(tmp_path):
    pytest.importorskip("gymnasium_robotics")
    # Calibrated (bench/presets.py --preset fetchreach-her, eval every 2k): success rate 0.0 at
    # 2,000 steps and 1.0 from 4,000 to 20,000 for seeds 1, 2, 3.
    s = solve("fetchreach-her", 8_000, tmp_path)
    assert s["solved_at_step"] is not None and s["eval_success_rate"] >= 0.95
