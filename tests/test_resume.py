"""Nothing is lost on a crash: SIGKILL a real training process, resume it, and end with the
parameters of an uninterrupted run of the same seed."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from rung import checkpoint

ARGS = ["--total-timesteps", "16384", "--update-epochs", "4", "--checkpoint-every", "4", "--eval-every", "4096",
        "--eval-episodes", "3", "--normalize-obs", "--normalize-reward"]


def rung_cmd(*args):
    return [sys.executable, "-m", "rung.cli", "train", *args]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    ref_dir, killed_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(rung_cmd("ppo", *ARGS, "--run-dir", str(ref_dir)), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(rung_cmd("ppo", *ARGS, "--run-dir", str(killed_dir)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = killed_dir / "checkpoints" / "latest.pt"
    deadline = time.time() + 240
    while time.time() < deadline:
        if latest.exists() and checkpoint.load(latest)["step"] >= 4096:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "summary.json").exists(), "the run finished before it was killed; the test proves nothing"
    killed_at = checkpoint.load(latest)["step"]
    assert killed_at < 16384

    p = subprocess.run(rung_cmd("--resume", str(killed_dir)), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    ref = checkpoint.load(ref_dir / "checkpoints" / "latest.pt")
    got = checkpoint.load(latest)
    assert got["step"] == ref["step"] == 16384
    for k, v in ref["agent"].items():
        assert torch.equal(v, got["agent"][k]), k
    # The resumed run's log has each step once: lines after the checkpoint were dropped.
    import json

    steps = [json.loads(line)["step"] for line in (killed_dir / "metrics.jsonl").read_text().splitlines()
             if "losses/policy" in line]
    assert steps == sorted(set(steps)) and steps[-1] == 16384


def test_atomic_save_keeps_previous_checkpoint_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    checkpoint.save_atomic({"format": checkpoint.FORMAT, "step": 1}, path)

    def dies_midway(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt  # as a kill would stop it, mid-file

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"format": checkpoint.FORMAT, "step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path)["step"] == 1
    assert list(tmp_path.iterdir()) == [path]  # and no partial temporary file beside it


def test_resume_removes_temporary_files_of_a_killed_save(tmp_path):
    from rung.run import prepare_run_dir

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("algo: ppo\n")
    (tmp_path / "checkpoints" / "latest.pt").write_bytes(b"keep")
    (tmp_path / "checkpoints" / ".latest.pt.tmp4242").write_bytes(b"left by a SIGKILL")
    prepare_run_dir(tmp_path, resume=True, force=False)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["latest.pt"]


def test_best_pt_written_after_the_checkpoint_is_dropped_on_resume(tmp_path):
    from rung.run import drop_best_after

    best = tmp_path / "best.pt"
    torch.save({"step": 3000, "eval_mean_return": 500.0}, best)
    drop_best_after(best, 4000)  # written before the checkpoint: part of the resumed history
    assert best.exists()
    drop_best_after(best, 2000)  # written after it: work the resumed run replays
    assert not best.exists()
    best.write_bytes(b"torn")  # cut off mid-write
    drop_best_after(best, 2000)
    assert not best.exists()


def test_the_best_of_the_checkpoints_moment_comes_back_when_a_later_one_is_dropped(tmp_path):
    # A resumed run that does not replay exactly (MuJoCo, GPU) may never beat the restored best
    # value again: dropping the later best.pt must not leave the run with none.
    from rung.run import drop_best_after, keep_best_at_checkpoint

    best = tmp_path / "best.pt"
    checkpoint.save_atomic({"step": 3000, "eval_mean_return": 400.0}, best)
    keep_best_at_checkpoint(best)  # latest.pt written at step 4000
    checkpoint.save_atomic({"step": 5000, "eval_mean_return": 500.0}, best)  # a better one after it
    drop_best_after(best, 4000)
    assert torch.load(best, weights_only=False)["step"] == 3000
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_tensorboard_keeps_the_checkpoint_step_after_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from rung.logging.logger import Logger

    log = Logger(tmp_path, 1000, progress=False)
    for step in (100, 200, 300):  # the checkpoint is at 200; 300 is lost work
        log.log(step, 0.0, {"losses/x": float(step)})
    log.close()
    log = Logger(tmp_path, 1000, start_step=200, progress=False)
    log.log(300, 0.0, {"losses/x": 3.0})
    log.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("losses/x")] == [(100, 100.0), (200, 200.0), (300, 3.0)]


def test_rng_state_carries_the_cuda_generators(monkeypatch):
    from rung import seeding

    saved = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    got = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", got.append)
    state = seeding.rng_state()
    assert state["cuda"] is saved
    seeding.set_rng_state(state)
    assert got == [saved]
    del state["cuda"]  # a checkpoint written on the CPU resumes anywhere
    seeding.set_rng_state(state)
    assert got == [saved]


def test_unrestored_envs_renormalise_their_first_observation_with_loaded_statistics():
    import numpy as np

    from rung.envs.make import make_env

    a = make_env("CartPole-v1", 2, 0, normalize_obs=True)
    a.reset()
    for _ in range(200):
        a.step(torch.randint(0, 2, (2,)))
    state = a.state_dict()
    state["envs"] = None  # as for MuJoCo or Fetch, whose simulators do not pickle
    b = make_env("CartPole-v1", 2, 7, normalize_obs=True)
    raw = b.envs.reset(seed=[7, 8])[0]
    b.reset()
    b.load_state_dict(state)
    mean, var = a.normalizer.obs_rms.mean, a.normalizer.obs_rms.var
    want = np.clip((raw - mean) / np.sqrt(var + a.normalizer.eps), -10, 10)
    assert torch.allclose(b.last_obs, torch.as_tensor(want, dtype=torch.float32), atol=1e-5)


def test_without_a_terminal_progress_is_a_plain_line_now_and_then(tmp_path, monkeypatch, capsys):
    # nohup, CI, a log file: no bar, yet a long run must say it is alive and how far it got.
    from rung.logging import logger as logger_module

    log = logger_module.Logger(tmp_path, 1000, progress=False, tensorboard=False)
    log.progress(100, 5.0, 2000.0)  # within the first interval: nothing
    monkeypatch.setattr(logger_module, "PLAIN_EVERY_S", 0.0)
    log.progress(500, 12.5, 2000.0)
    log.close()
    out = capsys.readouterr().out.splitlines()
    assert out == ["step       500 of 1,000 (50%)  return 12.5  2,000 steps/s"]


def test_language_model_progress_says_reward_and_samples_per_second(tmp_path, monkeypatch, capsys):
    # A language-model run passes its mean reward and samples/s; "return 0.4 ... steps/s" would misname both.
    from rung.logging import logger as logger_module

    monkeypatch.setattr(logger_module, "PLAIN_EVERY_S", 0.0)
    log = logger_module.Logger(tmp_path, 40, progress=False, tensorboard=False)
    log.set_units("samples/s", "reward")
    log.progress(10, 0.4375, 1.25)
    log.close()
    assert capsys.readouterr().out.splitlines() == ["step        10 of 40 (25%)  reward 0.438  1.25 samples/s"]

    (tmp_path / "bar").mkdir()
    bar = logger_module.Logger(tmp_path / "bar", 40, progress=True, tensorboard=False)
    bar.set_units("samples/s", "reward")
    bar.progress(10, 0.4375, 1.25)
    text = bar._bar.get_renderable()
    bar.close()
    from rich.console import Console

    console = Console(width=200, record=True, file=open("/dev/null", "w"))
    console.print(text)
    rendered = console.export_text()
    assert "reward 0.438" in rendered and "1.25 samples/s" in rendered and "steps/s" not in rendered


@pytest.mark.parametrize("algo, overrides", [
    ("ppo", dict(env="batched/CartPole-v1", num_envs=16, num_steps=32, total_timesteps=2048, normalize_obs=True)),
    ("sac", dict(env="batched/Pendulum-v1", num_envs=4, total_timesteps=400, learning_starts=100, batch_size=32,
                 hidden_sizes=(16, 16), normalize_obs=True)),
    ("dqn", dict(env="CartPole-v1", total_timesteps=400, learning_starts=100, batch_size=32, hidden_sizes=(16, 16))),
])
def test_evaluation_by_a_cpu_copy_of_the_policy_scores_as_the_policy_itself(tmp_path, monkeypatch, algo, overrides):
    # On a GPU, small policies of batched runs are evaluated by a CPU copy (Run._eval_policy).
    # The copy must play exactly as the policy: forced here on the CPU, where both can run.
    import json

    from rung import algos
    from rung.run import Run

    module = algos.get(algo)
    cfg = module.Config(**overrides, eval_every=overrides["total_timesteps"] // 2, eval_episodes=3, seed=2)
    module.train(dataclasses.replace(cfg, run_dir=str(tmp_path / "own")))
    copies = []
    real_copy = Run._eval_policy

    def tracked(self, agent):
        policy, device = real_copy(self, agent)
        copies.append(policy is not agent)
        return policy, device

    monkeypatch.setattr(Run, "evaluates_on_cpu", lambda self, agent: True)
    monkeypatch.setattr(Run, "_eval_policy", tracked)
    module.train(dataclasses.replace(cfg, run_dir=str(tmp_path / "copy")))
    assert copies and all(copies)

    def evals(d):
        rows = [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        return [r["eval/mean_return"] for r in rows if "eval/mean_return" in r]

    assert len(evals("own")) >= 2 and evals("own") == evals("copy")


def test_a_run_solved_at_its_final_evaluation_stays_solved_when_extended(tmp_path):
    """The final evaluation comes after the last checkpoint is written: the mark it sets must
    reach the checkpoint, or --resume with a larger budget would report the later step."""
    from rung.algos import ppo

    cfg = ppo.Config(env="CartPole-v1", num_envs=2, num_steps=32, total_timesteps=128, eval_every=0, eval_episodes=2,
                     target_return=1.0, run_dir=str(tmp_path / "run"))
    assert ppo.train(cfg).summary["solved_at_step"] == 128
    longer = dataclasses.replace(cfg, total_timesteps=256)
    summary = ppo.train(longer, resume=True).summary
    assert summary["total_timesteps"] == 256 and summary["solved_at_step"] == 128
