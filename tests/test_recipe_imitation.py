"""The imitation recipe (recipes/imitation/pipeline.py) runs end to end on CartPole with tiny
budgets: demos, bc, PPO from scratch and from the clone, the plot and the summary file. What it
learns at these budgets means nothing; the measured run is in the recipe's README."""

import importlib.util
import json
from pathlib import Path

import pytest


PIPELINE = Path(__file__).resolve().parents[1] / "recipes" / "imitation" / "pipeline.py"


def load_pipeline():
    spec = importlib.util.spec_from_file_location("imitation_pipeline", PIPELINE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pipeline_writes_plot_and_summary(tmp_path):
    pipeline = load_pipeline()
    out = tmp_path / "imitation"
    assert pipeline.main(["--env", "CartPole-v1", "--seeds", "1", "--out", str(out), "--demo-episodes", "2",
                          "--bc-epochs", "2", "--rl-steps", "512", "--eval-every", "256", "--eval-episodes", "2",
                          "--paired-episodes", "3"]) == 0
    assert (out / "demos.npz").is_file() and (out / "pipeline.png").stat().st_size > 0
    r = json.loads((out / "pipeline.json").read_text())
    assert {"env", "target", "rl_algo", "rl_steps", "init_reg_coef", "init_reg_decay_steps", "expert", "bc", "seeds",
            "median", "plot"} <= set(r)
    assert r["env"] == "CartPole-v1" and r["target"] == 475 and r["rl_algo"] == "ppo"
    assert r["expert"]["mean_return"] == 500.0 and r["expert"]["episodes"] == 2  # the scripted expert is perfect
    assert isinstance(r["bc"]["eval_mean_return"], float)
    [seed] = r["seeds"]
    for name in ("scratch", "from_bc"):
        run = seed[name]
        assert {"run_dir", "first_step_at_target", "final_eval", "curve"} <= set(run)
        assert [step for step, _ in run["curve"]] == [256, 512]
        assert set(r["median"][name]) == {"first_step_at_target", "final_eval", "final_paired"}
        assert isinstance(run["final_paired"], float)
    # The scripted CartPole expert balances every one of the paired start states to the end.
    assert r["paired"]["episodes"] == 3 and r["paired"]["expert"] == 500.0
    # The fine-tuned run really started from the clone, with the regulariser on.
    config = (Path(seed["from_bc"]["run_dir"]) / "config.yaml").read_text()
    assert f"init_from: {out / 'bc'}" in config and "init_reg_coef: 0.1" in config


def test_pipeline_with_sac_clones_for_sac_and_counts_success_on_fetchreach(tmp_path):
    pytest.importorskip("gymnasium_robotics")
    pipeline = load_pipeline()
    out = tmp_path / "fetch"
    assert pipeline.main(["--env", "FetchReach-v4", "--algo", "sac", "--seeds", "1", "--out", str(out), "--quick",
                          "--rl-steps", "300", "--eval-every", "150"]) == 0
    r = json.loads((out / "pipeline.json").read_text())
    # The preset's target is a success rate, and "at target" reads the success curve.
    assert r["rl_algo"] == "sac" and r["target"] == 0.95 and r["target_metric"] == "eval/success_rate"
    assert "for_algo: sac" in (out / "bc" / "config.yaml").read_text()
    run = r["seeds"][0]["from_bc"]
    assert 0.0 <= run["final_success_rate"] <= 1.0
    config = (Path(run["run_dir"]) / "config.yaml").read_text()
    assert f"init_from: {out / 'bc'}" in config and "init_reg_coef: 1.0" in config and "her: true" in config


def test_median_counts_never_as_last():
    pipeline = load_pipeline()
    assert pipeline.median_steps([100, 300, None]) == 300
    assert pipeline.median_steps([100, None, None]) is None
    assert pipeline.median_steps([100, 200]) == 150


def test_too_few_demo_episodes_is_one_line_error(tmp_path, capsys):
    pipeline = load_pipeline()
    assert pipeline.main(["--demo-episodes", "1", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--demo-episodes" in err and "\n" not in err
