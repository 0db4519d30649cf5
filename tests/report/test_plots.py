"""plots: a line per run folder unless compare made them seeds of one group, mean with a 95% CI band
over seeds, valid PNG files, and `bridgerl plot`'s user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from bridgerl.config import ConfigError
from bridgerl.report.plots import (build_figures, group_runs, grouped_curves, load_run, plot_runs, rolling_mean,
                                   runs_from_paths, series)
from bridgerl.report.stats import t_interval

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


def mark_as_compare(root: Path, run_dirs: list[Path]) -> None:
    """The results.json that `bridgerl compare` leaves beside its runs: label and seed of each."""
    records = [{"run_dir": d.name, "label": d.name.rsplit("-s", 1)[0], "seed": int(d.name.rsplit("-s", 1)[1])}
               for d in run_dirs]
    (root / "results.json").write_text(json.dumps({"settings": {}, "runs": records}))


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    """Five runs of one compare (base, grpo x 2 seeds, bridge, a lam point)."""
    dirs = [
        write_run(tmp_path, "base-s0", "sft", {0: 0.1}, 0.1, steps=0),
        write_run(tmp_path, "grpo-s0", "grpo", {0: 0.1, 2: 0.2}, 0.3, reward=0.0),
        write_run(tmp_path, "grpo-s1", "grpo", {0: 0.1, 2: 0.4}, 0.5, reward=0.2, dt=2.0),
        write_run(tmp_path, "bridge-s0", "bridge", {0: 0.1, 2: 0.3}, 0.6, bridge=True),
        write_run(tmp_path, "bridge-lam0.3-s0", "bridge", {0: 0.1, 2: 0.2}, 0.4, bridge=True),
    ]
    mark_as_compare(tmp_path, dirs)
    return dirs


def _labels(fig) -> list[str]:
    return fig.axes[0].get_legend_handles_labels()[1]


def test_runs_listed_by_a_compare_are_seeds_of_their_group_in_paper_order(runs: list[Path]) -> None:
    groups = group_runs(list(reversed(runs)))
    assert list(groups) == ["base", "grpo", "bridge", "bridge-lam0.3"]
    assert sorted(r.seed for r in groups["grpo"]) == [0, 1]
    assert [g for g, rs in group_runs([runs[0].parent]).items()] == list(groups)  # the compare folder itself


def test_plot_labels_each_run_by_its_folder_outside_a_compare(tmp_path: Path) -> None:
    """Two bridge runs of 3 and 250 steps are two lines, never one "bridge (2 seeds)" line."""
    short = write_run(tmp_path, "a", "bridge", {0: 0.1}, 0.2, steps=3)
    long = write_run(tmp_path, "b", "bridge", {0: 0.1, 100: 0.4}, 0.5, steps=250)
    seedish = write_run(tmp_path, "grpo-s0", "grpo", {0: 0.1}, 0.2)  # a compare-like name, but no compare lists it
    seedish2 = write_run(tmp_path, "grpo-s1", "grpo", {0: 0.1}, 0.3)
    groups = group_runs([short, long, seedish, seedish2])
    assert sorted(groups) == ["a", "b", "grpo-s0", "grpo-s1"] and all(len(rs) == 1 for rs in groups.values())
    fig = build_figures([short, long])["accuracy_vs_step.png"]
    assert _labels(fig) == ["a", "b"]  # no "(1 seed)": these are not seeds of anything
    import matplotlib.pyplot as plt

    plt.close("all")


def test_runs_of_one_name_in_two_places_and_of_two_compares_are_told_apart(tmp_path: Path) -> None:
    x = write_run(tmp_path / "x", "bridge", "bridge", {0: 0.1}, 0.2)
    y = write_run(tmp_path / "y", "bridge", "bridge", {0: 0.1}, 0.3)
    assert sorted(group_runs([x, y])) == ["x/bridge", "y/bridge"]
    one = write_run(tmp_path / "compare-one", "bridge-s0", "bridge", {0: 0.1}, 0.2)
    two = write_run(tmp_path / "compare-two", "bridge-s0", "bridge", {0: 0.1}, 0.3)
    mark_as_compare(one.parent, [one])
    mark_as_compare(two.parent, [two])
    assert sorted(group_runs([one, two])) == ["compare-one/bridge", "compare-two/bridge"]
    assert list(group_runs([one])) == ["bridge"]
    assert sorted(group_runs([one, tmp_path / "x" / "bridge"])) == ["bridge", "x/bridge"]  # a folder named as a group


def test_plot_on_a_missing_or_empty_folder_exits_2_with_one_line_and_writes_nothing(
        runs: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bridgerl.cli import main

    out = tmp_path / "figs"
    for bad, message in ((tmp_path / "nope", "no run folder"), (tmp_path / "empty", "holds no run")):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(SystemExit) as exc:
            main(["plot", str(runs[1]), str(bad), "--out", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
    with pytest.raises(ConfigError, match="no run folder"):
        runs_from_paths([tmp_path / "nope"])


def test_accuracy_curve_ends_with_the_final_evaluation(runs: list[Path]) -> None:
    x, y = series(load_run(runs[1]), "eval/accuracy")
    assert x.tolist() == [0, 2, 4] and y.tolist() == [0.1, 0.2, 0.3]
    t, _ = series(load_run(runs[1]), "eval/accuracy", "time_s")
    assert t.tolist() == [2.0, 4.0, 6.0]  # the final point sits at the last logged time


def test_band_is_the_mean_with_its_95_ci_over_seeds(runs: list[Path], tmp_path: Path) -> None:
    band = grouped_curves(runs, "eval/accuracy")["grpo"]
    assert band.x.tolist() == [0, 2, 4]
    np.testing.assert_allclose(band.mean, [0.1, 0.3, 0.4])
    np.testing.assert_allclose(band.lo, [0.1, 0.2, 0.3])  # two seeds: the bootstrap CI is their range
    np.testing.assert_allclose(band.hi, [0.1, 0.4, 0.5])
    assert band.n.tolist() == [2, 2, 2]
    finals = [0.30, 0.42, 0.51, 0.38, 0.47, 0.55, 0.33, 0.44]
    many = [write_run(tmp_path / "many", f"mix-s{i}", "mix", {0: 0.1}, acc) for i, acc in enumerate(finals)]
    mark_as_compare(tmp_path / "many", many)
    band = grouped_curves(many, "eval/accuracy")["mix"]
    _, lo, hi = t_interval(np.array(finals))
    assert min(finals) < band.lo[-1] < np.mean(finals) < band.hi[-1] < max(finals)  # a CI, not the min-max range
    assert band.hi[-1] - band.lo[-1] == pytest.approx(hi - lo, rel=0.35)


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
