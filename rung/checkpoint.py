"""Checkpoints written atomically: a kill at any moment leaves the previous file whole."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from rung.errors import UserError

FORMAT = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename over `path` (rename is atomic
    on POSIX), and fsync the folder so the rename itself survives a power cut."""
    _write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(path: str | Path, text: str) -> None:
    """`save_atomic` for a text file (config.yaml, summary.json): a kill mid-write leaves the old
    file, never an empty or half one that would make the run unresumable."""
    _write_atomic(path, lambda f: f.write(text.encode()))


def _write_atomic(path: str | Path, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or Ctrl-C mid-write: leave no partial file behind
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; the run has not written one yet (train longer than --checkpoint-every iterations) or the path is wrong")
    try:
        # Our own files hold numpy arrays and pickled simulators, which weights_only refuses.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise UserError(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}); delete it or resume from another run folder") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a rung checkpoint of format {FORMAT}; it may come from another rung version")
    return ckpt


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's config.yaml as a dict with `algo`. Where the file is damaged (a hand edit,
    or a kill mid-write by a rung older than the atomic writes) the config comes from
    checkpoints/latest.pt, which holds it too, and resuming writes the file again."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir} holds no run (no config.yaml); pass a folder written by 'rung train'")
    try:
        cfg = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError):
        cfg = None
    latest = run_dir / "checkpoints" / "latest.pt"
    # run_dir is the last key rung writes: a file cut short at a line boundary still parses but
    # lacks it, and the checkpoint has the whole config (a folder without one keeps what parsed).
    if isinstance(cfg, dict) and "algo" in cfg and ("run_dir" in cfg or not latest.exists()):
        return cfg
    if not latest.exists():
        raise UserError(f"{path} is damaged and the run has no checkpoint that holds its config; start the run again")
    try:
        # mmap: the config is read without loading a language model's weights into memory.
        ckpt = torch.load(latest, map_location="cpu", weights_only=False, mmap=True)
        saved = {"algo": ckpt["algo"], **ckpt["config"]}
    except Exception:
        raise UserError(f"{path} is damaged and so is {latest}; start the run again") from None
    print(f"rung: {path} is damaged; using the config saved in {latest}", file=sys.stderr)
    return saved
