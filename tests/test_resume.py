"""Nothing is lost on a crash: SIGKILL a real training process, resume it, and end with the
parameters of an uninterrupted run of the same seed."""

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
