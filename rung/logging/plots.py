"""Learning curves from run folders: one run's curve.png, and overlays across runs and seeds."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from rung.checkpoint import read_run_config
from rung.errors import UserError
from rung.logging.logger import read_metrics

TRAIN_KEY, EVAL_KEY = "charts/episodic_return", "eval/mean_return"
# Fields that differ between seeds of one experiment, or change how a run is carried out but
# not what it learns, and so do not split a group.
NOT_A_SETTING = {"seed", "run_dir", "device", "torch_threads", "log_every", "checkpoint_every", "save_buffer"}
# What `rung plot` draws for a group, the first that every run of the group logs: env runs'
# evaluations, then their training episodes; language-model runs' held-out accuracy, then their
# training reward.
CURVES = ((EVAL_KEY, "episodic return", "env steps"), (TRAIN_KEY, "episodic return", "env steps"),
          ("eval/accuracy", "held-out accuracy", "optimizer steps"), ("llm/reward_mean", "training reward", "optimizer steps"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _series(rows: list[dict[str, Any]], key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    pts = [(r[x], r[key]) for r in rows if key in r]
    if not pts:
        return np.empty(0), np.empty(0)
    a = np.asarray(pts, dtype=np.float64)
    return a[:, 0], a[:, 1]


def plot_curve(run_dir: str | Path, out: str | Path | None = None, threshold: float | None = None, *,
               train_key: str = TRAIN_KEY, eval_key: str = EVAL_KEY, ylabel: str = "episodic return",
               step_label: str = "env steps") -> Path:
    """A training metric (thin; episodic return by default) and the periodic evaluations
    (markers) against steps and against wall-clock seconds."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, label in ((axes[0], "step", step_label), (axes[1], "wall", "wall-clock seconds")):
        tx, ty = _series(rows, train_key, x)
        if len(tx):
            ax.plot(tx, ty, lw=0.8, alpha=0.6, label="training episodes" if train_key == TRAIN_KEY else train_key)
        ex, ey = _series(rows, eval_key, x)
        if len(ex):
            _, es = _series(rows, "eval/std_return", x)
            ax.plot(ex, ey, "o-", lw=1.6, ms=3, label="evaluation (mean)")
            if len(es) == len(ey):
                ax.fill_between(ex, ey - es, ey + es, alpha=0.2)
        if threshold is not None:
            ax.axhline(threshold, ls="--", c="k", lw=0.8, label=f"solved ({threshold:g})")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    if axes[0].get_legend_handles_labels()[0]:  # a run too short to log an episode or an evaluation has none
        axes[0].legend(loc="lower right", fontsize=8)
    cfg = read_run_config(run_dir) if (run_dir / "config.yaml").exists() else {}
    title = f"{cfg.get('algo', '')} on {cfg.get('env') or cfg.get('task', '')}, seed {cfg.get('seed', '?')}   ({run_dir.name})" if cfg else run_dir.name
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(out) if out else run_dir / "curve.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _load_config(run_dir: Path) -> dict[str, Any]:
    if not (run_dir / "config.yaml").exists():
        raise UserError(f"{run_dir} is not a run folder (no config.yaml); pass folders written by 'rung train'")
    return read_run_config(run_dir)


def group_runs(run_dirs: list[Path]) -> dict[str, list[Path]]:
    """Runs that differ only in seed form one group, labelled by algo, env and what sets it apart."""
    configs = {d: _load_config(d) for d in run_dirs}
    keyed: dict[str, list[Path]] = defaultdict(list)
    for d, cfg in configs.items():
        keyed[json.dumps({k: v for k, v in cfg.items() if k not in NOT_A_SETTING}, sort_keys=True, default=str)].append(d)
    def subject(s: dict[str, Any]) -> str:
        return f"{s.get('algo', '?')} {s.get('env') or s.get('task', '?')}"

    # A label names what sets its group apart from the groups of the same algorithm and env only:
    # a ppo run and a dqn run differ in gamma, learning rate and a dozen more fields, and listing
    # them all made a legend of hundreds of characters that squeezed the axes into a strip.
    parsed = {k: json.loads(k) for k in keyed}
    by_subject: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in parsed.values():
        by_subject[subject(s)].append(s)
    varying: dict[str, list[str]] = {}
    for name, settings in by_subject.items():
        shared = set.intersection(*(set(s) for s in settings))
        varying[name] = sorted({k for k in shared if any(s[k] != o[k] for s in settings for o in settings)})
    groups: dict[str, list[Path]] = {}
    for key, dirs in keyed.items():
        s = parsed[key]
        label = subject(s)
        extra = ", ".join(f"{k}={s.get(k)}" for k in varying[label])
        # Copies of one seed (a folder plotted twice, a rerun) are runs, not seeds.
        seeds = len({configs[d].get("seed") for d in dirs})
        unit = "seed" if seeds == len(dirs) else "run"
        groups[label + (f" ({extra})" if extra else "") + f" [{len(dirs)} {unit}{'s' * (len(dirs) > 1)}]"] = dirs
    return groups


def curve_for(logs: list[list[dict[str, Any]]]) -> tuple[str, str, str] | None:
    """(metric key, y label, x label) to draw for a group of runs' metrics: one quantity for the
    whole group, since a seed without evaluations yet must not average its training returns into
    the others' evaluation returns. None when no quantity is in every run."""
    return next((c for c in CURVES if all(any(c[0] in r for r in rows) for rows in logs)), None)


def plot_runs(run_dirs: list[str | Path], out: str | Path, x: str = "step") -> Path:
    """Overlay runs: per group, the mean across seeds and a band from the lowest to the highest
    seed, on a common grid (each seed's curve interpolated; the grid stops where the shortest
    seed stops, so the mean never mixes in missing seeds)."""
    dirs = [Path(d) for d in run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d} is not a directory; pass run folders written by 'rung train'")
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise UserError(f"-o {out}: rung plot writes PNG files; name one ending in .png")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn: set[tuple[str, str]] = set()
    lines = []
    for label, members in group_runs(dirs).items():
        logs = [read_metrics(d) for d in members]
        if any(logs) and not all(logs):
            # A seed that has logged nothing yet (just started) must not hide the seeds that have.
            for d, rows in zip(members, logs):
                if not rows:
                    print(f"rung: {d}: nothing logged yet, left out of {label}", file=sys.stderr)
            logs = [rows for rows in logs if rows]
        found = curve_for(logs)
        if found is None:
            print(f"rung: {label}: left out, nothing that every run of it logged can be drawn "
                  "(an evaluation, a training episode or a training step)", file=sys.stderr)
            continue
        key, ylabel, xlabel = found
        curves = [c for c in (_series(rows, key, x) for rows in logs) if len(c[0])]
        drawn.add((ylabel, xlabel))
        end = min(c[0][-1] for c in curves)
        start = max(c[0][0] for c in curves)
        grid = np.linspace(start, end, 200) if end > start else np.array([end])
        ys = np.stack([np.interp(grid, cx, cy) for cx, cy in curves])
        line, = ax.plot(grid, ys.mean(0), marker="o" if len(grid) == 1 else None, label=label)  # one point: a dot
        lines.append((line, label, key))
        if len(curves) > 1:
            ax.fill_between(grid, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2)
    if len({k for _, _, k in lines}) > 1:  # an evaluation return beside a training return: say which is which
        for line, label, key in lines:
            line.set_label(f"{label}: {key}")
    if not drawn:
        plt.close(fig)
        raise UserError(f"nothing to plot: no run in {', '.join(map(str, dirs))} has logged an evaluation, "
                        "a training episode or a training step yet")
    ylabels, xlabels = {y for y, _ in drawn}, {x_ for _, x_ in drawn}
    ax.set_xlabel(("env steps" if len(xlabels) > 1 else xlabels.pop()) if x == "step" else "wall-clock seconds")
    ax.set_ylabel(" / ".join(sorted(ylabels)))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
