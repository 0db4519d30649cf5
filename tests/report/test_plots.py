"""plots: grouping by recipe, mean / min-max bands over seeds, and valid PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from bridgerl.report.plots import build_figures, group_runs, grouped_curves, load_run, plot_runs, rolling_mean, series

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_run(root: Path, name: str, recipe: str, accs: dict[int, float], final: float, *, steps: int = 4,
              reward: float = 0.0, dt: float = 1.0, bridge: bool = False) -> Path:
    """A run directory as train() leaves it: config.yaml, metrics.jsonl, summary.json."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"recipe": recipe, "run": {"name": name, "seed": 0}}))
    rows = [{"step": 0, "time_s": 2.0, "eval/accuracy": accs.get(0)}]
    for s in range(1, steps + 1):
        row = {"step": s, "time_s": 2.0 + dt * s, "reward": reward + 0.1 * s, "completions/mean_length": 10.0 + s}
        if bridge:
            row.update({"bridge/lam": 0.5, "bridge/coop_gain": 0.01 * s})
        if s in accs and s < steps:
            row["eval/accuracy"] = accs[s]
        rows.append(row)
    rows.append({"step": steps, "eval/accuracy": final})  # train() logs the final evaluation without time_s
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"recipe": recipe, "eval/accuracy": final, "eval_hard/accuracy": final / 2,
               "initial/eval/accuracy": accs.get(0), "steps": steps, "time_s": 3.0 + dt * steps, "status": "ok"}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        write_run(tmp_path, "base-s0", "sft", {0: 0.1}, 0.1, steps=0),
        write_run(tmp_path, "grpo-s0", "grpo", {0: 0.1, 2: 0.2}, 0.3, reward=0.0),
        write_run(tmp_path, "grpo-s1", "grpo", {0: 0.1, 2: 0.4}, 0.5, reward=0.2, dt=2.0),
        write_run(tmp_path, "bridge-s0", "bridge", {0: 0.1, 2: 0.3}, 0.6, bridge=True),
        write_run(tmp_path, "bridge-lam0.3-s0", "bridge", {0: 0.1, 2: 0.2}, 0.4, bridge=True),
    ]


def test_runs_group_by_directory_prefix_in_paper_order(runs: list[Path], tmp_path: Path) -> None:
    odd = write_run(tmp_path, "my-run", "chord", {0: 0.1}, 0.2)
    groups = group_runs([*reversed(runs), odd])
    assert list(groups) == ["base", "grpo", "chord", "bridge", "bridge-lam0.3"]
    assert sorted(r.seed for r in groups["grpo"]) == [0, 1]
    assert groups["chord"][0].path == odd  # no -s<seed> suffix: the config's recipe names the group


def test_accuracy_curve_ends_with_the_final_evaluation(runs: list[Path]) -> None:
    x, y = series(load_run(runs[1]), "eval/accuracy")
    assert x.tolist() == [0, 2, 4] and y.tolist() == [0.1, 0.2, 0.3]
    t, _ = series(load_run(runs[1]), "eval/accuracy", "time_s")
    assert t.tolist() == [2.0, 4.0, 6.0]  # the final point sits at the last logged time


def test_band_is_mean_and_min_max_over_seeds(runs: list[Path]) -> None:
    band = grouped_curves(runs, "eval/accuracy")["grpo"]
    assert band.x.tolist() == [0, 2, 4]
    np.testing.assert_allclose(band.mean, [0.1, 0.3, 0.4])
    np.testing.assert_allclose(band.lo, [0.1, 0.2, 0.3])
    np.testing.assert_allclose(band.hi, [0.1, 0.4, 0.5])
    assert band.n.tolist() == [2, 2, 2]


def test_wall_clock_band_holds_a_finished_seed_at_its_final_accuracy(runs: list[Path]) -> None:
    band = grouped_curves(runs[1:3], "eval/accuracy", "time_s")["grpo"]
    assert band.x[0] == 2.0 and band.x[-1] == 10.0  # seed 1 (2 s/step) ends at 2 + 2*4
    assert band.n.tolist() == [2] * len(band.x)
    assert band.mean[-1] == pytest.approx((0.3 + 0.5) / 2)  # seed 0 ended at 6 s with 0.3
    assert band.lo[-1] == pytest.approx(0.3) and band.hi[-1] == pytest.approx(0.5)
    mid = np.flatnonzero(band.x >= 4.0)[0]  # 4 s: seed 0 at its step-2 eval (0.2), seed 1 between 0.1 and 0.4
    assert band.lo[mid] <= band.mean[mid] <= band.hi[mid]


def test_rolling_mean_is_trailing_and_keeps_every_point() -> None:
    np.testing.assert_allclose(rolling_mean(np.array([1.0, 3.0, 5.0, 7.0]), 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(rolling_mean(np.array([1.0, 3.0]), 1), [1.0, 3.0])


def test_every_plot_has_one_line_per_recipe(runs: list[Path]) -> None:
    figs = build_figures(runs)
    labels = [lab.split(" (")[0] for lab in figs["accuracy_vs_step.png"].axes[0].get_legend_handles_labels()[1]]
    assert labels == ["base", "grpo", "bridge", "bridge-lam0.3"]
    reward = [lab.split(" (")[0] for lab in figs["reward_vs_step.png"].axes[0].get_legend_handles_labels()[1]]
    assert reward == ["grpo", "bridge", "bridge-lam0.3"]  # base logged no reward
    gain = [lab.split(" (")[0] for lab in figs["bridge_gain_lam.png"].axes[0].get_legend_handles_labels()[1]]
    assert gain == ["bridge", "bridge-lam0.3"]
    assert "rolling mean over 5 steps" in figs["reward_vs_step.png"].axes[0].get_title()
    import matplotlib.pyplot as plt

    for fig in figs.values():
        plt.close(fig)


def test_plot_runs_writes_valid_pngs(runs: list[Path], tmp_path: Path) -> None:
    paths = plot_runs(runs, tmp_path / "plots")
    assert sorted(p.name for p in paths) == ["accuracy_vs_step.png", "accuracy_vs_time.png", "bridge_gain_lam.png",
                                             "length_vs_step.png", "reward_vs_step.png"]
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 10_000


def test_no_bridge_plot_without_bridge_runs(runs: list[Path], tmp_path: Path) -> None:
    paths = plot_runs(runs[:3])
    assert "bridge_gain_lam.png" not in [p.name for p in paths]
    assert all(p.parent == tmp_path for p in paths)  # default: the first run's parent
