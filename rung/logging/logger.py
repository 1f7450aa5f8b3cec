"""One logger, three sinks: a rich progress bar on stdout, metrics.jsonl and TensorBoard events.

metrics.jsonl has one JSON object a line with `step` (env steps so far), `wall` (seconds of
training so far, summed across resumes) and the metrics of that moment. Tools read runs from it."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from rung.checkpoint import write_text_atomic


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            break
    return rows


def truncate_metrics(run_dir: Path, step: int, rows_at_save: int | None = None) -> int:
    """Drop lines written after a checkpoint at `step`, so a resumed run does not log them twice.
    `rows_at_save` (the line count the checkpoint recorded) is exact: rows at the checkpoint's own
    step that came after it (the end-of-run evaluation, logged after the last save) go too. Older
    checkpoints recorded no count and are cut by step. Returns the rows kept."""
    rows = read_metrics(run_dir)
    rows = rows[:rows_at_save] if rows_at_save is not None else [r for r in rows if r["step"] <= step]
    write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def _scalar(v: Any) -> float | None:
    if isinstance(v, torch.Tensor):
        v = v.item()
    v = float(v)
    return None if math.isnan(v) else v


PLAIN_EVERY_S = 30.0


class Logger:
    def __init__(self, run_dir: Path, total_steps: int, *, start_step: int = 0, enabled: bool = True,
                 progress: bool | None = None, tensorboard: bool = True, rows_at_save: int | None = None):
        self.enabled = enabled
        self.rows = 0  # lines in metrics.jsonl, which a checkpoint records (truncate_metrics)
        # soft_wrap: piped to a file, a long line stays one line (grep finds "run folder ...").
        self.console = Console(stderr=False, soft_wrap=True)
        self.run_dir = run_dir
        self._file = None
        self._tb = None
        self._bar = None
        if not enabled:
            return
        if start_step > 0:
            self.rows = truncate_metrics(run_dir, start_step, rows_at_save)
        self._file = open(run_dir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from tensorboard.compat.proto.summary_pb2 import Summary
            from torch.utils.tensorboard import SummaryWriter

            self._summary_proto = Summary
            # purge_step hides events a killed run wrote after its last checkpoint. TensorBoard
            # hides steps >= purge_step, and the rows at the checkpoint's own step were written
            # before it and are not written again: hence the + 1.
            self._tb = SummaryWriter(str(run_dir), purge_step=start_step + 1 if start_step > 0 else None)
        if progress is None:
            progress = sys.stdout.isatty()
        # Without a terminal (nohup, CI, a log file) a bar would print nothing readable: a plain
        # line every PLAIN_EVERY_S seconds says the run is alive and how far it got.
        self._plain = not progress
        self._total, self._last_plain = total_steps, time.monotonic()
        self.rate_unit, self.value_name = "steps/s", "return"
        if progress:
            self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[value_name]} {task.fields[ret]}"),
                                 TextColumn("{task.fields[sps]} {task.fields[unit]}"),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=False)
            self._task = self._bar.add_task("train", total=total_steps or None, completed=start_step, ret="-", sps="-",
                                            value_name=self.value_name, unit=self.rate_unit)
            self._bar.start()

    def set_units(self, rate_unit: str, value_name: str) -> None:
        """What progress() is given, in its words: language-model runs pass samples/s and the mean
        reward where env runs pass env steps/s and the episode return."""
        self.rate_unit, self.value_name = rate_unit, value_name
        if self._bar is not None:
            self._bar.update(self._task, unit=rate_unit, value_name=value_name)

    def log(self, step: int, wall: float, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row: dict[str, Any] = {"step": step, "wall": round(wall, 3)}
        for k, v in metrics.items():
            s = _scalar(v)
            if s is not None:
                row[k] = s
        if self._tb is not None:
            # One event for the whole row: add_scalar makes an event per value, at about 80 us
            # each, which was 3% of a batched CartPole run that logs 15 values an iteration.
            Summary = self._summary_proto
            values = [Summary.Value(tag=k, simple_value=v) for k, v in row.items() if k not in ("step", "wall")]
            self._tb._get_file_writer().add_summary(Summary(value=values), step)
        self._file.write(json.dumps(row) + "\n")
        self.rows += 1

    def progress(self, step: int, ret: float | None = None, sps: float | None = None) -> None:
        if self._bar is None:
            if self.enabled and self._plain and time.monotonic() - self._last_plain >= PLAIN_EVERY_S:
                self._last_plain = time.monotonic()
                of = f" of {self._total:,} ({100 * step / self._total:.0f}%)" if self._total else ""
                ret_text = f"  {self.value_name} {_short(ret)}" if ret is not None and not math.isnan(ret) else ""
                sps_text = f"  {_rate(sps)} {self.rate_unit}" if sps is not None else ""
                self.info(f"step {step:>9,}{of}{ret_text}{sps_text}")
            return
        fields = {}
        if ret is not None and not math.isnan(ret):
            fields["ret"] = _short(ret)
        if sps is not None:
            fields["sps"] = _rate(sps)
        self._bar.update(self._task, completed=step, **fields)

    def info(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg, highlight=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()


def _short(value: float) -> str:
    # Returns run to the thousands, language-model rewards lie in [0, 1]: one decimal for the
    # first, three for the second.
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def _rate(per_second: float) -> str:
    # A language model makes under one sample a second on a CPU: "0 samples/s" would say nothing.
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2f}"
