"""Curves of finished runs: one line per group, the mean over its seeds with a 95% CI band.

    plot_runs(runs or run folders, out_dir) -> [accuracy_vs_step.png, accuracy_vs_time.png, reward_vs_step.png,
                                                length_vs_step.png, bridge_gain_lam.png (bridge runs only)]

A group is the seeds of one experiment only when that is explicit: `bridgerl compare` passes its
runs with their labels and seeds, and `bridgerl plot` reads them from the results.json that
compare leaves beside its run folders (a compare folder itself may also be given: all its runs).
Any other run folder is a line of its own, labelled by its folder name, whatever its recipe or
name (`runs/a` and `runs/b` are two lines even if both trained bridge). Runs of several compare
folders are labelled `<compare folder>/<label>`.

The band is the 95% CI of the mean over the seeds present at each x (`stats.seed_band`: the
expanded percentile bootstrap over seeds; none where one seed is present). The test-accuracy
curve of a run is every `eval/accuracy` in metrics.jsonl (step 0 is the starting model) plus the
final evaluation from summary.json, placed at the run's last step and last logged time (the
final evaluation runs on the whole split; periodic ones may be capped by eval.max_examples).
Per-step training metrics (reward, length, cooperative gain) are noisy at the testbed's batch
sizes, so they are smoothed with a trailing rolling mean per seed before averaging; the window
is written in each title.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bridgerl.config import ConfigError
from bridgerl.report.stats import seed_band
from bridgerl.utils.logging import read_metrics

# The paper's baselines in its table order; extra groups (lam sweeps, ...) follow, sorted.
CANONICAL = ("base", "sft", "grpo", "rl-zero", "cold-start", "alternate", "mix", "luffy", "chord", "bridge")
COLORS = {"base": "#7f7f7f", "sft": "#8c564b", "grpo": "#1f77b4", "rl-zero": "#1f77b4", "cold-start": "#ff7f0e",
          "alternate": "#9467bd", "mix": "#e377c2", "luffy": "#bcbd22", "chord": "#17becf", "bridge": "#d62728"}
EXTRA_COLORS = ("#2ca02c", "#98df8a", "#ff9896", "#c5b0d5", "#aec7e8", "#ffbb78", "#c49c94", "#dbdb8d")
SMOOTH = 5  # rolling-mean window (steps) for per-step training metrics
TIME_GRID = 200  # points of the common wall-clock grid that seeds are interpolated onto
COMPARE_RESULTS = "results.json"  # written by `bridgerl compare` beside its run folders


@dataclass
class Run:
    """One run directory, read once; `seeded` = one seed of a compare experiment (its group's label)."""

    path: Path
    group: str
    seed: int | None
    config: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    seeded: bool = False


@dataclass
class Band:
    """A group's curve: mean over seeds with its 95% CI (lo, hi) at each x; n = seeds present there."""

    x: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: np.ndarray


def load_run(run_dir: str | Path, group: str | None = None, seed: int | None = None) -> Run:
    """A run folder; without a group it is its own group, named after the folder."""
    path = Path(run_dir)
    cfg_path, metrics_path, summary_path = path / "config.yaml", path / "metrics.jsonl", path / "summary.json"
    config = (yaml.safe_load(cfg_path.read_text()) if cfg_path.is_file() else {}) or {}
    rows = read_metrics(metrics_path) if metrics_path.is_file() else []
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if group is None:
        return Run(path, path.name, config.get("run", {}).get("seed"), config, rows, summary)
    return Run(path, group, seed, config, rows, summary, seeded=True)


def _compare_labels(compare_dir: Path) -> dict[str, tuple[str, int]]:
    """run folder name -> (label, seed) for the runs a compare folder's results.json lists."""
    path = compare_dir / COMPARE_RESULTS
    try:
        records = json.loads(path.read_text()).get("runs", []) if path.is_file() else []
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a compare results file ({exc}); move it away or plot the runs "
                          "from another folder") from exc
    return {r["run_dir"]: (r["label"], r["seed"]) for r in records if {"run_dir", "label", "seed"} <= r.keys()}


def runs_from_paths(paths: list[str | Path]) -> list[Run]:
    """`bridgerl plot`'s runs: each folder a run of its own, unless its compare folder lists it as a
    seed of a group (see module doc); a compare folder stands for all its runs. A missing folder or
    one that holds no run is a ConfigError, raised before anything is read further or written."""
    found: list[tuple[Path, tuple[str, int] | None]] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise ConfigError(f"no run folder {str(p)!r}; give folders that `bridgerl train` or `compare` wrote")
        is_run = (p / "metrics.jsonl").is_file() or (p / "summary.json").is_file()
        listed = _compare_labels(p)
        if not is_run and listed:
            found += [(p / name, label) for name, label in listed.items() if (p / name).is_dir()]
        elif is_run:
            found.append((p, _compare_labels(p.parent).get(p.name)))
        else:
            raise ConfigError(f"{str(p)!r} holds no run (no metrics.jsonl or summary.json); give a run folder "
                              "or a compare folder")
    unique = list({q.resolve(): (q, lab) for q, lab in found}.values())
    compares = {q.parent.resolve() for q, lab in unique if lab is not None}
    seeded = [load_run(q, f"{q.parent.name}/{lab[0]}" if len(compares) > 1 else lab[0], lab[1])
              for q, lab in unique if lab is not None]
    names = [q.name for q, lab in unique if lab is None]
    taken = {r.group for r in seeded}
    alone = []
    for q in (q for q, lab in unique if lab is None):  # a folder of its own: its name, or parent/name
        alone.append(load_run(q))  # where two folders share a name or a compare group has it
        if names.count(q.name) > 1 or q.name in taken:
            alone[-1].group = f"{q.parent.name}/{q.name}"
    return seeded + alone


def order_key(group: str) -> tuple[int, str]:
    return (CANONICAL.index(group), "") if group in CANONICAL else (len(CANONICAL), group)


def group_runs(runs: list[str | Path] | list[Run]) -> dict[str, list[Run]]:
    """Runs by their group (run folders: `runs_from_paths`), groups in the paper's table order."""
    groups: dict[str, list[Run]] = {}
    for run in (runs if all(isinstance(r, Run) for r in runs) else runs_from_paths(runs)):
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
    """Mean over seeds and its 95% CI (`stats.seed_band`). On steps the seeds share x values (the union is used, with
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
    return Band(xs, np.nanmean(table, axis=0), *seed_band(table), n)


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
    band = "line: mean over seeds, band: its 95% CI"
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


def _draw(ax: Any, bands: dict[str, Band], extras: dict[str, str], untrained: set[str] = frozenset(),
          seeded: set[str] = frozenset()) -> None:
    x_max = max((b.x[-1] for b in bands.values()), default=0.0)
    x_min = min((b.x[0] for b in bands.values()), default=0.0)
    for name, b in bands.items():
        color = _color(name, extras)
        width = 2.2 if name == "bridge" else 1.4
        label = f"{name} ({int(b.n.max())} seed{'s' if b.n.max() > 1 else ''})" if name in seeded else name
        if name in untrained and len(b.x) == 1 and x_max > b.x[0]:  # base (no training): a level
            ax.hlines(b.mean[0], x_min, x_max, colors=color, linestyles="--", linewidth=width, label=label)
            if b.hi[0] > b.lo[0]:
                ax.axhspan(b.lo[0], b.hi[0], color=color, alpha=0.12)
            continue
        ax.plot(b.x, b.mean, color=color, linewidth=width, label=label, marker="o" if len(b.x) <= 12 else None,
                markersize=3)
        if np.any(b.hi > b.lo):
            ax.fill_between(b.x, b.lo, b.hi, color=color, alpha=0.15, linewidth=0)


def build_figures(runs: list[str | Path] | list[Run], smooth: int = SMOOTH) -> dict[str, Any]:
    """file name -> matplotlib Figure (not yet saved); the data behind each line is `grouped_curves`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    groups = group_runs(runs)
    seeded = {g for g, rs in groups.items() if any(r.seeded for r in rs)}
    untrained = {g for g, rs in groups.items() if all(r.summary.get("steps") == 0 for r in rs)}
    extras: dict[str, str] = {}
    figures = {}
    for spec in _specs(smooth):
        bands = grouped_curves(groups, spec.key, spec.x, spec.smooth)
        if not bands:
            continue
        fig, ax = plt.subplots(figsize=(7.5, 4.6))
        _draw(ax, bands, extras, untrained, seeded)
        if spec.x == "step":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax, spec.title, spec.xlabel, spec.ylabel)
        figures[spec.file] = fig

    bridge = {g: rs for g, rs in groups.items() if any(r.config.get("recipe") == "bridge" for r in rs)}
    gain = grouped_curves(bridge, "bridge/coop_gain", "step", smooth)
    if gain:
        lam = grouped_curves(bridge, "bridge/lam", "step")
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.5, 6.4), sharex=True, height_ratios=[2, 1])
        _draw(ax1, gain, extras, seeded=seeded)
        ax1.axhline(0.0, color="black", linewidth=0.6)
        _finish(ax1, "BRIDGE cooperative gain J_RL(theta, w) - J_RL(thetahat, w) vs step\n"
                f"(rolling mean over {smooth} steps; line: mean over seeds, band: its 95% CI)", None,
                "cooperative gain")
        _draw(ax2, lam, extras, seeded=seeded)
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


def plot_runs(runs: list[str | Path] | list[Run], out_dir: str | Path | None = None,
              smooth: int = SMOOTH) -> list[Path]:
    """Write the PNGs into `out_dir` (default: the first run's parent); return their paths.
    Run folders are checked (`runs_from_paths`) before anything is written."""
    import matplotlib.pyplot as plt

    if not runs:
        return []
    first = runs[0].path if isinstance(runs[0], Run) else Path(runs[0])
    runs = runs if all(isinstance(r, Run) for r in runs) else runs_from_paths(runs)
    out = Path(out_dir) if out_dir is not None else first.parent
    figures = build_figures(runs, smooth)
    if figures:
        out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / name
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
