"""rung eval, rung plot and curve.png on real run folders."""

import json

import pytest

from rung.algos import ppo
from rung.cli import main


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    dirs = []
    for seed in (1, 2):
        cfg = ppo.Config(seed=seed, total_timesteps=1024, eval_every=512, eval_episodes=2, run_dir=str(base / f"s{seed}"))
        dirs.append(ppo.train(cfg).run_dir)
    return dirs


def test_eval_writes_eval_json(runs, capsys):
    assert main(["eval", str(runs[0]), "--episodes", "3", "--checkpoint", "latest"]) == 0
    out = capsys.readouterr().out
    result = json.loads((runs[0] / "eval.json").read_text())
    assert result["episodes"] == 3 and len(result["returns"]) == 3
    assert f"{result['mean_return']:.2f}" in out and result["checkpoint"] == "latest"
    assert "no best.pt" not in out  # asked for latest
    assert main(["eval", str(runs[0]), "--episodes", "1"]) == 0
    assert "no best.pt" not in capsys.readouterr().out  # the run evaluated, so best.pt exists


def test_eval_video_writes_an_mp4(runs):
    pytest.importorskip("imageio_ffmpeg")
    pytest.importorskip("pygame")
    assert main(["eval", str(runs[0]), "--episodes", "1", "--video"]) == 0
    video = runs[0] / "eval.mp4"
    assert video.exists() and video.stat().st_size > 1000
    import imageio.v2 as imageio

    reader = imageio.get_reader(video)
    frame = reader.get_data(0)
    assert frame.shape[2] == 3 and frame.std() > 0  # a rendered picture, not a blank frame


def test_plot_overlays_seeds(runs, tmp_path, capsys):
    out = tmp_path / "cmp.png"
    assert main(["plot", *map(str, runs), "-o", str(out)]) == 0
    assert out.exists() and out.stat().st_size > 5000
    from rung.logging.plots import group_runs

    groups = group_runs(list(runs))
    assert len(groups) == 1 and "2 seeds" in next(iter(groups))


def test_plot_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["plot", str(tmp_path / "x"), "-o", str(tmp_path / "o.png")]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_curve_png_is_written(runs):
    assert (runs[0] / "curve.png").stat().st_size > 5000


def test_eval_and_collect_refuse_flags_that_do_not_apply(runs, tmp_path, capsys):
    assert main(["eval", str(runs[0]), "--weights", "raw"]) == 2
    assert "is an env run; --weights is for the other kind of run" in capsys.readouterr().err
    assert main(["eval", str(runs[0]), "--seed", "-1"]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err
    assert main(["collect", "--env", "CartPole-v1", "--seed", "-3", "-o", str(tmp_path / "d.npz")]) == 2
    assert "--seed must be >= 0" in capsys.readouterr().err


def test_plot_output_path(runs, tmp_path, capsys):
    assert main(["plot", str(runs[0]), "-o", str(tmp_path / "curves")]) == 2
    assert "name one ending in .png" in capsys.readouterr().err
    out = tmp_path / "new" / "dir" / "c.png"
    assert main(["plot", str(runs[0]), "-o", str(out)]) == 0 and out.stat().st_size > 5000


def fake_run(folder, algo, rows):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"algo: {algo}\nseed: 1\n")
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_plot_draws_language_model_runs_and_refuses_empty_ones(tmp_path, capsys):
    run = fake_run(tmp_path / "grpo", "grpo", [{"step": s, "wall": s, "llm/reward_mean": 0.1 * s, "eval/accuracy": 0.05 * s}
                                              for s in range(1, 6)])
    assert main(["plot", str(run), "-o", str(tmp_path / "g.png")]) == 0
    empty = fake_run(tmp_path / "empty", "ppo", [])
    assert main(["plot", str(empty), "-o", str(tmp_path / "e.png")]) == 2
    assert "nothing to plot" in capsys.readouterr().err and not (tmp_path / "e.png").exists()


def test_plot_names_a_run_it_leaves_out_and_counts_copies_of_a_seed_as_runs(tmp_path, capsys):
    run = fake_run(tmp_path / "grpo", "grpo", [{"step": s, "wall": s, "llm/reward_mean": 0.1 * s} for s in range(1, 6)])
    empty = fake_run(tmp_path / "empty", "ppo", [])
    assert main(["plot", str(run), str(empty), "-o", str(tmp_path / "g.png")]) == 0
    assert "ppo ? [1 seed]: left out" in capsys.readouterr().err
    from rung.logging.plots import group_runs

    twice = fake_run(tmp_path / "grpo2", "grpo", [])
    assert list(group_runs([run, twice])) == ["grpo ? [2 runs]"]  # both seed 1


def test_a_group_plots_one_quantity_for_every_seed():
    from rung.logging.plots import curve_for

    evaluated = [{"step": 1, "charts/episodic_return": 20.0}, {"step": 2, "eval/mean_return": 50.0}]
    not_yet = [{"step": 1, "charts/episodic_return": 22.0}]
    assert curve_for([evaluated, evaluated])[0] == "eval/mean_return"
    assert curve_for([evaluated, not_yet])[0] == "charts/episodic_return"  # not eval for one and training for the other
    assert curve_for([[{"step": 1, "eval/accuracy": 0.3}]])[:2] == ("eval/accuracy", "held-out accuracy")
    assert curve_for([[{"step": 1, "sys/rss_mb": 300.0}]]) is None


def test_plot_labels_name_only_what_sets_a_group_apart_from_its_own_algorithm_and_env(tmp_path, monkeypatch, capsys):
    from matplotlib.axes import Axes

    from rung.logging.plots import group_runs

    def run(name, config, rows):
        folder = fake_run(tmp_path / name, "x", rows)
        (folder / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in config.items()))
        return folder

    one_eval = [{"step": 512, "wall": 1.0, "eval/mean_return": 30.0}]
    a = run("ppo", {"algo": "ppo", "env": "CartPole-v1", "seed": 1, "clip_coef": 0.2, "learning_rate": 0.001}, one_eval)
    b = run("rf", {"algo": "reinforce", "env": "CartPole-v1", "seed": 1, "learning_rate": 0.01}, one_eval)
    c = run("grpo", {"algo": "grpo", "task": "chain_sum", "seed": 1, "kl_coef": 0.0}, one_eval)
    a2 = run("ppo2", {"algo": "ppo", "env": "CartPole-v1", "seed": 1, "clip_coef": 0.2, "learning_rate": 0.01}, one_eval)
    labels = sorted(group_runs([a, b, c]))
    # Different algorithms differ in many settings; their labels list none (the legend once
    # squeezed the axes into a strip). Two ppo runs on one env are told apart by what differs.
    assert labels == ["grpo chain_sum [1 seed]", "ppo CartPole-v1 [1 seed]", "reinforce CartPole-v1 [1 seed]"]
    assert sorted(group_runs([a, a2, b])) == ["ppo CartPole-v1 (learning_rate=0.001) [1 seed]",
                                              "ppo CartPole-v1 (learning_rate=0.01) [1 seed]",
                                              "reinforce CartPole-v1 [1 seed]"]
    drawn = []
    real_plot = Axes.plot

    def recorded_plot(self, x, *args, **kw):
        drawn.append((len(x), kw.get("marker")))
        return real_plot(self, x, *args, **kw)

    monkeypatch.setattr(Axes, "plot", recorded_plot)
    assert main(["plot", str(a), "-o", str(tmp_path / "one.png")]) == 0
    assert drawn == [(1, "o")]  # one evaluation is a dot; a line through one point draws nothing


def test_plot_leaves_out_a_seed_with_nothing_logged_and_names_each_quantity(tmp_path, capsys):
    import yaml
    from matplotlib.axes import Axes

    evals = [{"step": s, "wall": s, "eval/mean_return": 10.0 * s} for s in range(1, 4)]
    seed1 = fake_run(tmp_path / "s1", "ppo", evals)
    seed2 = fake_run(tmp_path / "s2", "ppo", [])  # just started
    config = yaml.safe_load((seed2 / "config.yaml").read_text())
    (seed2 / "config.yaml").write_text(yaml.safe_dump({**config, "seed": 2}))
    assert main(["plot", str(seed1), str(seed2), "-o", str(tmp_path / "p.png")]) == 0
    assert f"{seed2}: nothing logged yet, left out" in capsys.readouterr().err

    training = fake_run(tmp_path / "dqn", "dqn", [{"step": s, "wall": s, "charts/episodic_return": 5.0 * s}
                                                  for s in range(1, 4)])
    labels = []
    real_legend = Axes.legend

    def recorded(self, *args, **kw):
        labels.extend(line.get_label() for line in self.get_lines())
        return real_legend(self, *args, **kw)

    import unittest.mock

    with unittest.mock.patch.object(Axes, "legend", recorded):
        assert main(["plot", str(seed1), str(training), "-o", str(tmp_path / "q.png")]) == 0
    assert sorted(labels) == ["dqn ? [1 seed]: charts/episodic_return", "ppo ? [1 seed]: eval/mean_return"]
