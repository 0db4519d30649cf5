"""Curves of finished runs, one line per recipe: the mean over seeds with a min-max band.

    plot_runs(run_dirs, out_dir) -> [accuracy_vs_step.png, accuracy_vs_time.png, reward_vs_step.png,
                                     length_vs_step.png, bridge_gain_lam.png (bridge runs only)]

Runs are grouped by their directory name without the `-s<seed>` suffix (so `bridge-lam0.3-s1`
is the group `bridge-lam0.3`), else by the recipe in their config.yaml. The test-accuracy curve
of a run is every `eval/accuracy` in metrics.jsonl (step 0 is the starting model) plus the final
evaluation from summary.json, placed at the run's last step and last logged time (the final
evaluation runs on the whole split; periodic ones may be capped by eval.max_examples).
Per-step training metrics (reward, length, cooperative gain) are noisy at the testbed's batch
sizes, so they are smoothed with a trailing rolling mean per seed before averaging; the window
is written in each title.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bridgerl.utils.logging import read_metrics

# The paper's baselines in its table order; extra groups (lam sweeps, ...) follow, sorted.
CANONICAL = ("base", "sft", "grpo", "rl-zero", "cold-start", "alternate", "mix", "luffy", "chord", "bridge")
COLORS = {"base": "#7f7f7f", "sft": "#8c564b", "grpo": "#1f77b4", "rl-zero": "#1f77b4", "cold-start": "#ff7f0e",
          "alternate": "#9467bd", "mix": "#e377c2", "luffy": "#bcbd22", "chord": "#17becf", "bridge": "#d62728"}
EXTRA_COLORS = ("#2ca02c", "#98df8a", "#ff9896", "#c5b0d5", "#aec7e8", "#ffbb78", "#c49c94", "#dbdb8d")
SMOOTH = 5  # rolling-mean window (steps) for per-step training metrics
TIME_GRID = 200  # points of the common wall-clock grid that seeds are interpolated onto
_SEED_SUFFIX = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")


@dataclass
class Run:
    """One run directory, read once."""

    path: Path
    group: str
    seed: int | None
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


@dataclass
class Band:
    """A group's curve: mean over seeds with its min and max at each x; n = seeds present there."""

    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray


def group_name(run_dir: Path, config: dict[str, Any] | None = None) -> tuple[str, int | None]:
    """`grpo-s2` -> ("grpo", 2); otherwise the config's recipe (or the directory name), seed unknown."""
    m = _SEED_SUFFIX.match(Path(run_dir).name)
    if m:
        return m["group"], int(m["seed"])
    recipe = (config or {}).get("recipe")
    return (recipe or Path(run_dir).name), (config or {}).get("run", {}).get("seed")


def load_run(run_dir: str | Path) -> Run:
    path = Path(run_dir)
    cfg_path, metrics_path, summary_path = path / "config.yaml", path / "metrics.jsonl", path / "summary.json"
    config = yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    group, seed = group_name(path, config)
    return Run(path, group, seed, config or {}, rows, summary)


def order_key(group: str) -> tuple[int, str]:
    return (CANONICAL.index(group), "") if group in CANONICAL else (len(CANONICAL), group)


def group_runs(run_dirs: list[str | Path] | list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by recipe (see module doc), groups in the paper's table order."""
    groups: dict[str, list[Run]] = {}
    for r in run_dirs:
        run = r if isinstance(r, Run) else load_run(r)
        groups.setdefault(run.group, []).append(run)
    return {g: groups[g] for g in sorted(groups, key=order_key)}


def rolling_mean(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last `window` values (fewer at the start), so no point is dropped."""
    if window <= 1 or len(y) == 0:
        return np.asarray(y, dtype=float)
    c = np.cumsum(np.insert(np.asarray(y, dtype=float), 0, 0.0))
    idx = np.arange(1, len(y) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def end_time(run: Run) -> float | None:
    """The last logged wall-clock time (the row train() writes for the final evaluation has none)."""
    times = [r["time_s"] for r in run.rows if r.get("time_s") is not None]
    return times[-1] if times else None


def series(run: Run, key: str, x: str = "step", smooth: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of one metric of one run; x is "step" or "time_s". For eval/accuracy the final
    evaluation from summary.json is appended at the last logged step and time."""
    pts = [(r[x], r[key]) for r in run.rows if r.get(key) is not None and r.get(x) is not None]
    if key == "eval/accuracy" and run.summary.get("eval/accuracy") is not None and run.rows:
        end = run.summary.get("steps", run.rows[-1].get("step")) if x == "step" else end_time(run)
        if end is not None:  # the final evaluation replaces any row logged at the last step
            pts = [p for p in pts if p[0] < end] + [(end, run.summary["eval/accuracy"])]
    if not pts:
        return np.array([]), np.array([])
    xs, ys = (np.asarray(v, dtype=float) for v in zip(*pts))
    return xs, rolling_mean(ys, smooth)


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]], on: str = "step") -> Band | None:
    """Mean / min / max over seeds. On steps the seeds share x values (the union is used, with
    the seeds present at each x); on wall-clock every seed is interpolated onto one grid from
    its first point on and, once finished, keeps its last value (the model it ended with), so
    the mean does not jump when the fastest seed ends."""
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return None
    if on == "step":
        xs = np.unique(np.concatenate([x for x, _ in curves]))
        table = np.full((len(curves), len(xs)), np.nan)
        for i, (x, y) in enumerate(curves):
            table[i, np.searchsorted(xs, x)] = y
    else:
        start, end = min(x[0] for x, _ in curves), max(x[-1] for x, _ in curves)
        xs = np.linspace(start, end, TIME_GRID) if end > start else np.array([start])
        table = np.full((len(curves), len(xs)), np.nan)
        for i, (x, y) in enumerate(curves):
            inside = xs >= x[0]
            table[i, inside] = np.interp(xs[inside], x, y)  # np.interp holds y[-1] beyond x[-1]
    n = np.sum(~np.isnan(table), axis=0)
    keep = n > 0
    table, xs, n = table[:, keep], xs[keep], n[keep]
    return Band(xs, np.nanmean(table, axis=0), np.nanmin(table, axis=0), np.nanmax(table, axis=0), n)


def grouped_curves(runs: list[str | Path] | list[Run] | dict[str, list[Run]], key: str, x: str = "step",
                   smooth: int = 1) -> dict[str, Band]:
    """One Band per recipe group that logged `key` (the lines a plot draws)."""
    groups = runs if isinstance(runs, dict) else group_runs(runs)
    out = {}
    for name, members in groups.items():
        band = aggregate([series(r, key, x, smooth) for r in members], on="time" if x == "time_s" else "step")
        if band is not None:
            out[name] = band
    return out


@dataclass
class PlotSpec:
    file: str
    key: str
    x: str
    title: str
    xlabel: str
    ylabel: str
    smooth: int = 1
    only_bridge: bool = False


def _specs(smooth: int) -> list[PlotSpec]:
    roll = f"rolling mean over {smooth} steps; " if smooth > 1 else ""
    band = "line: mean over seeds, band: min-max"
    return [
        PlotSpec("accuracy_vs_step.png", "eval/accuracy", "step", f"Test accuracy (greedy pass@1) vs step\n({band})",
                 "optimizer step", "test accuracy"),
        PlotSpec("accuracy_vs_time.png", "eval/accuracy", "time_s",
                 f"Test accuracy (greedy pass@1) vs wall-clock\n({band}; time includes evaluation)",
                 "wall-clock since run start (s)", "test accuracy"),
        PlotSpec("reward_vs_step.png", "reward", "step", f"Training reward (mean over rollouts) vs step\n({roll}{band})",
                 "optimizer step", "mean reward", smooth),
        PlotSpec("length_vs_step.png", "completions/mean_length", "step",
                 f"Mean completion length vs step\n({roll}{band})", "optimizer step", "tokens per completion", smooth),
    ]


def _color(group: str, extras: dict[str, str]) -> str:
    if group in COLORS:
        return COLORS[group]
    return extras.setdefault(group, EXTRA_COLORS[len(extras) % len(EXTRA_COLORS)])


def _draw(ax: Any, bands: dict[str, Band], extras: dict[str, str], untrained: set[str] = frozenset()) -> None:
    x_max = max((b.x[-1] for b in bands.values()), default=0.0)
    x_min = min((b.x[0] for b in bands.values()), default=0.0)
    for name, b in bands.items():
        color = _color(name, extras)
        width = 2.2 if name == "bridge" else 1.4
        label = f"{name} ({int(b.n.max())} seed{'s' if b.n.max() > 1 else ''})"
        if name in untrained and len(b.x) == 1 and x_max > b.x[0]:  # base (no training): a level
            ax.hlines(b.mean[0], x_min, x_max, colors=color, linestyles="--", linewidth=width, label=label)
            if b.hi[0] > b.lo[0]:
                ax.axhspan(b.lo[0], b.hi[0], color=color, alpha=0.12)
            continue
        ax.plot(b.x, b.mean, color=color, linewidth=width, label=label, marker="o" if len(b.x) <= 12 else None,
                markersize=3)
        if np.any(b.hi > b.lo):
            ax.fill_between(b.x, b.lo, b.hi, color=color, alpha=0.15, linewidth=0)


def build_figures(run_dirs: list[str | Path], smooth: int = SMOOTH) -> dict[str, Any]:
    """file name -> matplotlib Figure (not yet saved); the data behind each line is `grouped_curves`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    groups = group_runs(run_dirs)
    untrained = {g for g, rs in groups.items() if all(r.summary.get("steps") == 0 for r in rs)}
    extras: dict[str, str] = {}
    figures = {}
    for spec in _specs(smooth):
        bands = grouped_curves(groups, spec.key, spec.x, spec.smooth)
        if not bands:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        _draw(ax, bands, extras, untrained)
        if spec.x == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax, spec.title, spec.xlabel, spec.ylabel)
        figures[spec.file] = fig

    bridge = {g: rs for g, rs in groups.items() if any(r.config.get("recipe") == "bridge" for r in rs)}
    gain = grouped_curves(bridge, "bridge/coop_gain", "step", smooth)
    if gain:
        lam = grouped_curves(bridge, "bridge/lam", "step")
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.5, 6.4), sharex=True, height_ratios=[2, 1])
        _draw(ax1, gain, extras)
        ax1.axhline(0.0, color="black", linewidth=0.6)
        _finish(ax1, "BRIDGE cooperative gain J_RL(theta, w) - J_RL(thetahat, w) vs step\n"
                f"(rolling mean over {smooth} steps; line: mean over seeds, band: min-max)", None, "cooperative gain")
        _draw(ax2, lam, extras)
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax2, "penalty weight lam vs step", "optimizer step", "lam")
        fig.tight_layout()
        figures["bridge_gain_lam.png"] = fig
    return figures


def _finish(ax: Any, title: str, xlabel: str | None, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    ax.figure.tight_layout()


def plot_runs(run_dirs: list[str | Path], out_dir: str | Path | None = None, smooth: int = SMOOTH) -> list[Path]:
    """Write the PNGs into `out_dir` (default: the first run's parent); return their paths."""
    import matplotlib.pyplot as plt

    if not run_dirs:
        return []
    out = Path(out_dir) if out_dir is not None else Path(run_dirs[0]).parent
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in build_figures(run_dirs, smooth).items():
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
