"""Checkpoints written atomically: a kill at any moment leaves the previous file whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from rung.errors import UserError

FORMAT = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """Write to a temporary file beside `path`, fsync it, then rename over `path` (rename is atomic
    on POSIX), and fsync the folder so the rename itself survives a power cut."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
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
