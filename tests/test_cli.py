"""Bad input ends in one line on stderr, exit code 2, no traceback; good input does what it says."""

import subprocess
import sys

import pytest
import torch

from rung.cli import main
from rung.logging.logger import read_metrics


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, message", [
    (["train", "ppx"], "unknown algorithm 'ppx'"),
    (["train", "td3", "--env", "Pendulum-v1", "--total-timesteps", "512"], "no gradient step would run"),
    (["train", "sac", "--env", "Pendulum-v1", "--preset", "none", "--total-timesteps", "200"], "--batch-size 256"),
    (["train", "ppo", "--env", "CartPol-v1"], "did you mean CartPole-v1"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--preset", "cartpol-ppo"], "did you mean cartpole-ppo?"),
    (["train", "ppo", "--learning-rate", "-1"], "--learning-rate must be > 0"),
    (["train", "ppo", "--learning-rate", "fast"], "--learning-rate expects a finite number"),
    (["train", "ppo", "--learning-rate", "inf"], "--learning-rate must be a finite number, got inf"),
    (["train", "ppo", "--ent-coef", "nan"], "--ent-coef must be a finite number, got nan"),
    (["train", "ppo", "--vf-coef", "-1"], "--vf-coef must be >= 0"),
    (["train", "ppo", "--target-kl", "-0.1"], "--target-kl must be > 0"),
    (["train", "ppo", "--num-envs", "0"], "--num-envs must be > 0"),
    (["train", "ppo", "--num-minibatches", "7"], "does not divide the rollout of 256"),
    (["train", "ppo", "--num-envs", "1", "--num-steps", "4", "--num-minibatches", "4"], "leaves one sample a minibatch"),
    (["train", "ppo", "--gamma", "1.5"], "--gamma must be in"),
    (["train", "ppo", "--activation", "sigmoid"], "--activation expects one of tanh, relu, elu"),
    (["train", "ppo", "--lerning-rate", "0.1"], "did you mean --learning-rate"),
    (["train", "reinforce", "--num-envs", "1", "--num-steps", "1"], "one sample a rollout"),
    (["train", "ppo", "--device", "cuda:x"], "'cuda:x' is not a device"),
    (["train", "ppo", "--device", "cudaa"], "'cudaa' is not a device"),
    (["train", "reinforce", "--preset", "cartpole-ppo"], "preset cartpole-ppo is for ppo"),
    (["train", "--resume", "/nonexistent/run"], "holds no run to resume"),
    (["frobnicate"], "unknown command"),
    (["list", "extra"], "rung list takes no arguments"),
    (["train", "ppo", "--num-env", "4"], "did you mean --num-envs"),           # no abbreviations
    (["train", "--resume", "/nonexistent/run", "--force"], "--force would replace it; drop one"),
    (["train", "ppo", "--run-dir", ""], "--run-dir is empty"),
    (["train", "ppo", "--env", "batched/CartPol-v1"], "did you mean batched/CartPole-v1"),
    (["train", "ppo", "--randomize", "gravity=9:10"], "--randomize needs a batched env such as batched/CartPole-v1"),
    (["train", "ppo", "--env", "batched/CartPole-v1", "--randomize", "gravity=9"], "NAME=LOW:HIGH"),
    (["train", "ppo", "--env", "batched/CartPole-v1", "--randomize", "mass=1:2", "--total-timesteps", "8192"],
     "has no parameter 'mass'"),
    (["eval", "/nonexistent/run"], "is not a directory"),
    (["plot", "/nonexistent/run", "-o", "x.png"], "is not a directory"),
])
def test_bad_input_is_one_line_exit_2(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and err.startswith("rung: error: ")


def test_a_non_finite_number_from_python_is_refused_too():
    from rung.algos import ppo, sac
    from rung.errors import UserError

    with pytest.raises(UserError, match="--learning-rate must be a finite number"):
        ppo.Config(learning_rate=float("inf")).validate()
    with pytest.raises(UserError, match="--target-return must be a finite number"):
        sac.Config(target_return=float("nan")).validate()


def test_widths_may_be_separated_by_spaces(capsys, tmp_path):
    # "64 64" once read as one layer of 6464 units.
    import yaml

    d = tmp_path / "r"
    assert run_cli(capsys, "train", "ppo", "--hidden-sizes", "64 32", "--total-timesteps", "256", "--eval-every", "0",
                   "--run-dir", str(d))[0] == 0
    assert yaml.safe_load((d / "config.yaml").read_text())["hidden_sizes"] == [64, 32]


@pytest.mark.parametrize("algo, flags, message", [
    ("ppo", ["--env", "CartPol-v1"], "did you mean"),
    ("ppo", ["--env", "batched/CartPol-v1"], "did you mean"),
    ("ppo", ["--env", "batched/CartPole-v1", "--randomize", "mass=1:2"], "has no parameter"),
    # refused after the run folder was made, once the env shows its action space
    ("sac", ["--env", "CartPole-v1"], "needs continuous actions"),
    ("dqn", ["--env", "Pendulum-v1"], "needs discrete actions"),
])
def test_a_mistyped_env_or_parameter_leaves_no_run_folder(capsys, tmp_path, monkeypatch, algo, flags, message):
    monkeypatch.chdir(tmp_path)  # the default run folder is ./runs/...
    code, _, err = run_cli(capsys, "train", algo, *flags)
    assert code == 2 and message in err
    assert not (tmp_path / "runs").exists()


def test_a_refused_run_keeps_the_folders_it_did_not_make(capsys, tmp_path):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("x")
    code, _, _ = run_cli(capsys, "train", "sac", "--env", "CartPole-v1", "--run-dir", str(keep / "a" / "b"))
    assert code == 2
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, _ = run_cli(capsys, "train", "sac", "--env", "CartPole-v1", "--run-dir", str(empty))
    assert code == 2 and empty.is_dir()  # made by the user, so left in place


def test_existing_run_dir_is_not_overwritten_without_force(capsys, tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.yaml").write_text("algo: ppo\n")
    code, _, err = run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "256")
    assert code == 2 and "already holds another run" in err and "--force" in err
    assert (d / "config.yaml").read_text() == "algo: ppo\n"


def test_force_keeps_the_old_run_until_the_new_one_starts_training(capsys, tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "config.yaml").write_text("algo: ppo\n")
    (d / "metrics.jsonl").write_text("{}\n")
    # sac is refused on a discrete env after the folder is claimed: the old run must survive it.
    code, _, err = run_cli(capsys, "train", "sac", "--env", "CartPole-v1", "--run-dir", str(d), "--force")
    assert code == 2 and "left as it was" in err
    assert sorted(p.name for p in d.iterdir()) == ["config.yaml", "metrics.jsonl"]
    assert (d / "config.yaml").read_text() == "algo: ppo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
    code, _, _ = run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "256", "--eval-every", "0", "--force")
    assert code == 0 and (d / "checkpoints" / "latest.pt").exists()
    assert (d / "config.yaml").read_text() != "algo: ppo\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # the set-aside run is gone


def test_missing_and_corrupt_checkpoint_on_resume(capsys, tmp_path):
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "512", "--eval-every", "0")[0] == 0
    ck = d / "checkpoints" / "latest.pt"
    ck.write_bytes(b"not a checkpoint")
    code, _, err = run_cli(capsys, "train", "--resume", str(d))
    assert code == 2 and "corrupt" in err
    ck.unlink()
    code, _, err = run_cli(capsys, "train", "--resume", str(d))
    assert code == 2 and "no checkpoint" in err


def test_no_traceback_from_the_real_command():
    p = subprocess.run([sys.executable, "-m", "rung.cli", "train", "ppo", "--clip-coef", "-0.5"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip() == "rung: error: --clip-coef must be in [0.0, 10.0], got -0.5"
    assert "Traceback" not in p.stderr


def test_help_lists_flags_with_their_docs(capsys):
    code, out, _ = run_cli(capsys, "train", "ppo", "--help")
    assert code == 0
    assert "--learning-rate" in out and "Adam learning rate" in out and "--num-envs" in out
    assert "one of tanh, relu," in out  # a choice flag names its choices


def test_list_shows_algorithms_and_presets(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in ("ppo", "reinforce", "cartpole-ppo", "acrobot-ppo", "mountaincar-ppo", "pendulum-ppo"):
        assert name in out


def test_flags_override_preset(capsys, tmp_path):
    import yaml

    d = tmp_path / "r"
    code, _, err = run_cli(capsys, "train", "--preset", "acrobot-ppo", "--total-timesteps", "4096",
                           "--num-envs", "4", "--no-normalize-reward", "--hidden-sizes", "32,32",
                           "--eval-every", "0", "--run-dir", str(d))
    assert code == 0, err
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["env"] == "Acrobot-v1" and cfg["num_envs"] == 4 and cfg["normalize_reward"] is False
    assert cfg["normalize_obs"] is True and cfg["gae_lambda"] == 0.94 and cfg["hidden_sizes"] == [32, 32]


def test_missing_simulator_names_the_extra(capsys):
    import importlib.util

    if importlib.util.find_spec("mujoco") is not None:
        pytest.skip("mujoco is installed here, so the error cannot happen")
    code, _, err = run_cli(capsys, "train", "ppo", "--env", "HalfCheetah-v5")
    assert code == 2 and "pip install 'gymnasium[mujoco]'" in err and err.count("\n") == 1


def test_missing_video_dependency_names_the_extra(capsys, tmp_path, monkeypatch):
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "256", "--eval-every", "0")[0] == 0
    monkeypatch.setitem(sys.modules, "imageio", None)  # makes `import imageio` raise ImportError
    monkeypatch.setitem(sys.modules, "imageio.v2", None)
    code, _, err = run_cli(capsys, "eval", str(d), "--episodes", "1", "--video")
    assert code == 2 and "pip install 'rung[video]'" in err and err.count("\n") == 1


def test_env_with_a_preset_starts_from_it(capsys, tmp_path):
    import yaml

    d = tmp_path / "r"
    code, out, err = run_cli(capsys, "train", "ppo", "--env", "batched/CartPole-v1", "--total-timesteps", "16384",
                             "--eval-every", "0", "--run-dir", str(d))
    assert code == 0, err
    assert "starting from preset batched-cartpole-ppo" in out
    cfg = yaml.safe_load((d / "config.yaml").read_text())
    assert cfg["num_envs"] == 64 and cfg["actor_hidden_sizes"] == [0] and cfg["total_timesteps"] == 16384
    d2 = tmp_path / "r2"
    code, out, _ = run_cli(capsys, "train", "ppo", "--env", "batched/CartPole-v1", "--preset", "none",
                           "--total-timesteps", "512", "--eval-every", "0", "--run-dir", str(d2))
    assert code == 0 and "starting from preset" not in out
    assert yaml.safe_load((d2 / "config.yaml").read_text())["num_envs"] == 8


def test_a_refused_resume_leaves_config_yaml_as_it_was(capsys, tmp_path):
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "512", "--eval-every", "0")[0] == 0
    before = (d / "config.yaml").read_text()
    # The checkpoint's networks are 64x64: loading them into 128x128 fails, named by its flag.
    code, _, err = run_cli(capsys, "train", "--resume", str(d), "--hidden-sizes", "128,128", "--total-timesteps", "1024")
    assert code == 2 and err.count("\n") == 1
    assert "does not fit this run" in err and "--hidden-sizes [128, 128] against [64, 64]" in err
    assert (d / "config.yaml").read_text() == before  # a plain --resume still works afterwards
    (d / "checkpoints" / "latest.pt").unlink()
    code, _, err = run_cli(capsys, "train", "--resume", str(d), "--total-timesteps", "1024")
    assert code == 2 and "no checkpoint" in err
    assert (d / "config.yaml").read_text() == before


def test_a_run_dir_that_is_a_file_is_refused(capsys, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    for extra in ([], ["--force"]):
        code, _, err = run_cli(capsys, "train", "--run-dir", str(f), "--total-timesteps", "256", *extra)
        assert code == 2 and "is a file, not a folder" in err
    assert f.read_text() == "x"


def test_ctrl_c_before_the_first_checkpoint_says_there_is_nothing_to_resume(capsys, tmp_path, monkeypatch):
    from rung.algos import ppo

    def interrupted(cfg, **kw):
        from rung.run import Run

        Run("ppo", cfg, **kw)  # makes the folder and config.yaml, as a run stopped early has
        raise KeyboardInterrupt

    monkeypatch.setattr(ppo, "train", interrupted)
    d = tmp_path / "r"
    code, _, err = run_cli(capsys, "train", "ppo", "--run-dir", str(d))
    assert code == 130 and "nothing to resume" in err and "--resume" not in err
    (d / "config.yaml").write_text("algo: ppo\n")  # now stands for a finished run
    code, _, err = run_cli(capsys, "train", "ppo", "--run-dir", str(d), "--force")
    assert code == 130 and "left as it was" in err
    assert (d / "config.yaml").read_text() == "algo: ppo\n" and len(list(tmp_path.iterdir())) == 1


def test_a_run_that_stopped_solved_resumes_to_its_end_without_training(capsys, tmp_path):
    import json

    d = tmp_path / "r"
    # A target every policy meets: solved at the first evaluation, after one 256-step rollout.
    flags = ["--num-envs", "4", "--num-steps", "64", "--eval-every", "256", "--eval-episodes", "2",
             "--target-return", "1", "--stop-when-solved", "--total-timesteps", "4096"]
    assert run_cli(capsys, "train", "ppo", "--run-dir", str(d), *flags)[0] == 0
    assert json.loads((d / "summary.json").read_text())["total_timesteps"] == 256
    # finish() checkpointed before its final evaluation; resuming that (a run killed during it)
    # must only evaluate again.
    assert run_cli(capsys, "train", "--resume", str(d))[0] == 0
    assert json.loads((d / "summary.json").read_text())["total_timesteps"] == 256
    assert torch.load(d / "checkpoints" / "latest.pt", weights_only=False)["step"] == 256


def test_a_cuda_device_number_past_the_last_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU here: stand in for one
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, _, err = run_cli(capsys, "train", "ppo", "--device", "cuda:3", "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "torch sees 1 CUDA device(s), cuda:0 to cuda:0" in err


def test_a_fixed_cuda_index_under_torchrun_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU here: stand in for two
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before any process group is joined
    code, _, err = run_cli(capsys, "train", "ppo", "--device", "cuda:0", "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "use --device cuda, and each process takes cuda:LOCAL_RANK" in err
    assert not (tmp_path / "r").exists()


def test_resume_keeps_the_runs_seed(capsys, tmp_path):
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "512", "--eval-every", "0")[0] == 0
    before = (d / "config.yaml").read_text()
    code, _, err = run_cli(capsys, "train", "--resume", str(d), "--seed", "5", "--total-timesteps", "1024")
    assert code == 2 and "is seed 1 and resumes as it; drop --seed" in err
    assert (d / "config.yaml").read_text() == before
    assert run_cli(capsys, "train", "--resume", str(d), "--seed", "1", "--total-timesteps", "1024")[0] == 0


@pytest.mark.parametrize("algo, flags, message", [
    # The checkpoint counts iterations: with another size the budget, schedules and intervals would
    # silently come out wrong (sac from 1 to 4 envs trained nothing more, from 2 to 1 overshot).
    ("ppo", ["--num-envs", "4"], "--num-envs 4 against the checkpoint's 8"),
    ("ppo", ["--num-steps", "16"], "--num-steps 16 against the checkpoint's 32"),
    ("sac", ["--num-envs", "2"], "--num-envs 2 against the checkpoint's 1"),
    # Same shapes, another env: config.yaml and the solved threshold would say the wrong one.
    ("ppo", ["--env", "CartPole-v0"], "--env CartPole-v0 against the checkpoint's CartPole-v1"),
    # A budget already passed: config.yaml and summary.json would disagree.
    ("ppo", ["--total-timesteps", "256"], "--total-timesteps 256 is below the checkpoint's step 512"),
])
def test_resume_refuses_what_it_cannot_honour(capsys, tmp_path, algo, flags, message):
    d = tmp_path / "r"
    env = ["--env", "Pendulum-v1", "--learning-starts", "64", "--batch-size", "32", "--hidden-sizes", "16,16"] \
        if algo == "sac" else []
    assert run_cli(capsys, "train", algo, "--run-dir", str(d), "--total-timesteps", "512", "--eval-every", "0",
                   *env)[0] == 0
    before = (d / "metrics.jsonl").read_text(), (d / "config.yaml").read_text()
    more = [] if "--total-timesteps" in flags else ["--total-timesteps", "1024"]
    code, _, err = run_cli(capsys, "train", "--resume", str(d), *flags, *more)
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert ((d / "metrics.jsonl").read_text(), (d / "config.yaml").read_text()) == before


def test_resume_survives_a_damaged_config_yaml(capsys, tmp_path):
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "512", "--eval-every", "0")[0] == 0
    good = (d / "config.yaml").read_text()
    (d / "config.yaml").write_text("algo: ppo\nhidden_sizes: [64")  # cut short by a kill mid-write (older rung)
    assert run_cli(capsys, "plot", str(d), "-o", str(tmp_path / "p.png"))[0] == 0
    (d / "config.yaml").write_text("")
    assert good.rstrip().splitlines()[-1].startswith("run_dir: ")  # what a whole file ends with
    (d / "config.yaml").write_text("".join(good.splitlines(keepends=True)[:5]))  # cut at a line end: parses
    from rung.checkpoint import read_run_config

    assert read_run_config(d)["total_timesteps"] == 512 and "is damaged" in capsys.readouterr().err
    code, _, err = run_cli(capsys, "train", "--resume", str(d), "--total-timesteps", "1024")
    assert code == 0 and "config.yaml is damaged; using the config saved in" in err
    assert (d / "config.yaml").read_text() == good.replace("total_timesteps: 512", "total_timesteps: 1024")
    (d / "config.yaml").write_text("")
    (d / "checkpoints" / "latest.pt").unlink()
    code, _, err = run_cli(capsys, "train", "--resume", str(d))
    assert code == 2 and "is damaged and the run has no checkpoint that holds its config" in err


def test_resuming_a_finished_run_logs_its_final_evaluation_once(capsys, tmp_path):
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "512", "--eval-every", "0")[0] == 0
    assert run_cli(capsys, "train", "--resume", str(d))[0] == 0
    finals = [r["step"] for r in read_metrics(d) if "eval/final_mean_return" in r]
    assert finals == [512]
    # Extended, the run's log has only the new end's final evaluation, not one mid-curve.
    assert run_cli(capsys, "train", "--resume", str(d), "--total-timesteps", "1024")[0] == 0
    assert [r["step"] for r in read_metrics(d) if "eval/final_mean_return" in r] == [1024]


def test_unwritable_paths_and_a_full_disk_are_one_line(capsys, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("in the way")
    code, _, err = run_cli(capsys, "train", "--run-dir", str(tmp_path / "file" / "sub"), "--total-timesteps", "256")
    assert code == 2 and err.count("\n") == 1 and "a part of this path is a file, not a folder" in err
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "256", "--eval-every", "0")[0] == 0
    code, _, err = run_cli(capsys, "plot", str(d), "-o", str(tmp_path / "file" / "p.png"))
    assert code == 2 and err.count("\n") == 1 and f"{tmp_path / 'file'} is a file, not a folder" in err
    code, _, err = run_cli(capsys, "plot", str(d), "-o", str(tmp_path / "file" / "sub" / "p.png"))
    assert code == 2 and err.count("\n") == 1 and "a part of this path is a file" in err

    import errno

    from rung import checkpoint

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", full)
    code, _, err = run_cli(capsys, "train", "--resume", str(d), "--total-timesteps", "512")
    assert code == 2 and err.count("\n") == 1 and "No space left on device; free some space" in err
    assert checkpoint.load(d / "checkpoints" / "latest.pt")["step"] == 256  # the last checkpoint is whole


def test_an_env_whose_package_is_missing_is_one_line_and_leaves_no_folder(capsys, tmp_path):
    import importlib.util

    if importlib.util.find_spec("jax") is not None:
        pytest.skip("jax is installed here")
    code, _, err = run_cli(capsys, "train", "ppo", "--env", "phys2d/CartPole-v1", "--total-timesteps", "512",
                           "--run-dir", str(tmp_path / "r"))
    assert code == 2 and err.count("\n") == 1 and "needs the package 'jax'" in err
    assert not (tmp_path / "r").exists()


def test_eval_says_when_best_falls_back_to_latest(capsys, tmp_path):
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "512", "--eval-every", "0")[0] == 0
    code, out, _ = run_cli(capsys, "eval", str(d), "--episodes", "1")
    assert code == 0 and "no best.pt in this run (no periodic evaluation has written one): scored latest.pt" in out


def test_off_policy_checkpoints_carry_the_episodes_not_yet_logged(capsys, tmp_path):
    # A checkpoint between two log lines: the resumed run's next line must count those episodes.
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "dqn", "--env", "CartPole-v1", "--run-dir", str(d), "--total-timesteps", "300",
                   "--learning-starts", "64", "--log-every", "1000", "--eval-every", "0")[0] == 0
    ck = torch.load(d / "checkpoints" / "latest.pt", weights_only=False)
    episodes = ck["tally"]["episodes"]
    assert len(episodes) > 3 and sum(n for _, n in episodes) <= 300
    del ck["tally"]  # as written before the tally was saved: still resumes
    torch.save(ck, d / "checkpoints" / "latest.pt")
    assert run_cli(capsys, "train", "--resume", str(d), "--total-timesteps", "400")[0] == 0


def test_resume_into_another_run_dir_is_refused(capsys, tmp_path):
    d = tmp_path / "r"
    assert run_cli(capsys, "train", "--run-dir", str(d), "--total-timesteps", "512", "--eval-every", "0")[0] == 0
    code, _, err = run_cli(capsys, "train", "--resume", str(d), "--run-dir", str(tmp_path / "other"))
    assert code == 2 and "drop --run-dir" in err and not (tmp_path / "other").exists()
    assert run_cli(capsys, "train", "--resume", str(d), "--run-dir", str(d), "--total-timesteps", "1024")[0] == 0


@pytest.mark.parametrize("algo, extra", [("dqn", ["--env", "CartPole-v1", "--learning-starts", "64", "--batch-size", "32"]),
                                         ("sac", ["--env", "Pendulum-v1", "--learning-starts", "64", "--batch-size", "32"])])
def test_a_learning_rate_given_on_resume_holds(capsys, tmp_path, algo, extra):
    # The optimizers' state dicts carry their learning rate: restoring them brought the old one back
    # while config.yaml recorded the new one.
    d = tmp_path / "r"
    assert run_cli(capsys, "train", algo, *extra, "--run-dir", str(d), "--total-timesteps", "200", "--eval-every", "0",
                   "--learning-rate", "2e-3", "--checkpoint-every", "100")[0] == 0
    assert run_cli(capsys, "train", "--resume", str(d), "--total-timesteps", "300", "--learning-rate", "1e-5")[0] == 0
    ck = torch.load(d / "checkpoints" / "latest.pt", weights_only=False)
    optimizers = [ck[name] for name in ("optimizer", "actor_opt", "critic_opt", "alpha_opt") if name in ck]
    assert optimizers and {g["lr"] for opt in optimizers for g in opt["param_groups"]} == {1e-5}


def test_eval_prints_the_success_rate_of_goal_envs(capsys, tmp_path, monkeypatch):
    import rung.evaluation

    d = tmp_path / "fetch"
    d.mkdir()
    (d / "config.yaml").write_text("algo: sac\nenv: FetchReach-v4\n")
    monkeypatch.setattr(rung.evaluation, "evaluate_run", lambda *a: {
        "env": "FetchReach-v4", "algo": "sac", "checkpoint": "best", "step": 20000, "mean_return": -1.5,
        "std_return": 0.5, "success_rate": 0.9})
    code, out, _ = run_cli(capsys, "eval", str(d), "--episodes", "2")
    assert code == 0 and "over 2 episodes, success rate 0.90" in out


def test_ctrl_c_outside_training_is_one_line_and_exit_130(capsys, monkeypatch):
    from rung import cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "plot", interrupted)
    code, _, err = run_cli(capsys, "plot", "x", "-o", "y.png")
    assert code == 130 and err.strip() == "interrupted"
