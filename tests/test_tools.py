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
