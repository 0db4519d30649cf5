"""claims: each paper claim as a paired difference with a 95% CI and a verdict, from synthetic run
folders (per-problem grades, curves, summaries) of a 5-seed compare; nothing is trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bridgerl.report.claims import (META_OFF, Evidence, add_intervals, claims, dip_recovery, final_grades,
                                    restricted_time)
from bridgerl.report.compare import _runs, plan_runs, write_outputs
from bridgerl.report.stats import FAILS, HOLDS, UNCLEAR
from bridgerl.report.summary import summarize
from run_folders import record, settings, write_run

N_PROBLEMS = 200
SEEDS = range(5)
# fraction of the test problems each recipe solves (the first k of them), before per-seed noise
SOLVED = {"bridge": 0.60, "cold-start": 0.59, "grpo": 0.30, "sft": 0.75}


def grades(recipe_share: float, seed: int, salt: int) -> list[float]:
    """Problems 0..k-1 solved, k = share * N_PROBLEMS; then 3 problems of the seed's own flipped."""
    g = np.zeros(N_PROBLEMS)
    g[: int(round(recipe_share * N_PROBLEMS))] = 1.0
    flips = np.random.default_rng([seed, salt]).choice(N_PROBLEMS, size=3, replace=False)
    g[flips] = 1.0 - g[flips]
    return g.tolist()


def build(root: Path, groups: dict[str, float | list[float]], *, collapsed: tuple[str, ...] = ()) -> list[dict]:
    """Run folders and compare records: every group x 5 seeds with per-problem grades (a group's share
    solved, or one share per seed). cold-start dips
    after its switch (step 2: 50% -> 30% at step 3) and ends at its grades; bridge reaches 62% at step
    2 (time 3 s) and ends at 5 s; cold-start runs 2 s a step (ends at 9 s)."""
    recs = []
    for salt, (label, share) in enumerate(groups.items()):
        recipe = "bridge" if label.startswith("bridge") else label
        for seed in SEEDS:
            name = f"{label}-s{seed}"
            mine = share[seed] if isinstance(share, list) else share
            g = {"test": grades(mine, seed, salt), "test_hard": grades(mine / 2, seed, salt + 100)}
            evals = {0: 0.1, 2: 0.5, 3: 0.3} if label == "cold-start" else {0: 0.1, 2: 0.62}
            d = write_run(root, name, recipe, evals, 0.0, sft_steps=2 if label == "cold-start" else 0,
                          dt=2.0 if label == "cold-start" else 1.0, grades=g,
                          status="shadow_collapsed" if name in collapsed else "ok")
            recs.append(record(d, label, recipe, seed))
    return recs


def measure(root: Path, recs: list[dict], **kw):
    runs = _runs(root, recs)
    ev = Evidence(runs)
    rows = summarize(recs, runs)
    add_intervals(rows, ev)
    return {c.title.split(":")[0]: c for c in claims(rows, ev, settings(**kw))}, {r["label"]: r for r in rows}


# -- measures on one curve ----------------------------------------------------------------------

def test_restricted_time_counts_a_late_or_missing_arrival_as_the_horizon() -> None:
    t, acc = np.array([0.0, 10.0, 20.0, 30.0]), np.array([0.1, 0.3, 0.5, 0.4])
    assert restricted_time(t, acc, 0.45, horizon=25.0) == 20.0
    assert restricted_time(t, acc, 0.45, horizon=15.0) == 15.0  # reached after the horizon
    assert restricted_time(t, acc, 0.9, horizon=25.0) == 25.0  # never reached


def test_dip_is_the_switch_minus_the_first_evaluations_after_it_and_recovery_the_end_minus_those() -> None:
    steps, acc = np.array([0, 25, 50, 75, 100, 125]), np.array([0.1, 0.3, 0.4, 0.25, 0.15, 0.45])
    d = dip_recovery(steps, acc, 50)
    assert d["at_switch"] == 0.4 and d["early"] == pytest.approx(0.2) and d["early_steps"] == [75, 100]
    assert d["dip"] == pytest.approx(0.2) and d["recovery"] == pytest.approx(0.25) and d["final"] == 0.45
    one = dip_recovery(np.array([0, 50, 100]), np.array([0.1, 0.4, 0.3]), 50)  # only the final one after it
    assert one["early_steps"] == [100] and one["dip"] == pytest.approx(0.1) and one["recovery"] == 0.0
    assert dip_recovery(np.array([0, 50]), np.array([0.1, 0.4]), 50) is None


def test_final_grades_are_read_by_problem_id(tmp_path: Path) -> None:
    d = write_run(tmp_path, "r", "grpo", {0: 0.1}, 0.0, grades={"test": [1.0, 0.0, 1.0]})
    assert final_grades(d, "test") == {"test-0": 1.0, "test-1": 0.0, "test-2": 1.0}
    assert final_grades(d, "test_hard") is None
    (d / "completions" / "final_test.jsonl").write_text("{not json\n")
    assert final_grades(d, "test") is None  # unreadable counts as missing: seeds only


# -- the claims -----------------------------------------------------------------------------------

def test_final_order_is_a_paired_difference_per_baseline_with_its_verdict(tmp_path: Path) -> None:
    found, rows = measure(tmp_path, build(tmp_path, SOLVED))
    order = found["Final accuracy"]
    tests = {(t.comparison, t.split): t for t in order.tests}
    assert tests["bridge - grpo", "test"].verdict == HOLDS  # +30 points on the same problems
    assert tests["bridge - cold-start", "test"].verdict == UNCLEAR  # +1 point: 2 problems of 200
    assert tests["bridge - sft", "test"].verdict == FAILS  # sft solves 30 problems more
    assert order.verdict == FAILS and not tests["bridge - grpo", "hard split"].decisive
    iv = tests["bridge - grpo", "test"].interval
    assert (iv.seeds, iv.problems) == (5, N_PROBLEMS) and iv.lo < 0.30 < iv.hi
    assert tests["bridge - grpo", "test"].basis == f"5 seeds x {N_PROBLEMS} problems"
    ci = rows["bridge"]["test_ci"]
    assert ci["lo"] < ci["mean"] < ci["hi"] and ci["mean"] == pytest.approx(rows["bridge"]["test"][0])


def test_time_dip_noise_lam_and_meta_claims(tmp_path: Path) -> None:
    groups = {**SOLVED, "bridge-lam0.3": SOLVED["bridge"], "bridge-lam0.7": SOLVED["grpo"], META_OFF: 0.45}
    found, _ = measure(tmp_path, build(tmp_path, groups), reward_noise=0.2, lam_sweep=[0.3, 0.7])
    (time,) = found["Time to reach cold-start's accuracy"].tests
    assert time.unit == "s" and time.direction == -1
    assert time.interval.mean == pytest.approx(3.0 - 5.0) and time.verdict == HOLDS  # 3 s vs never by 5 s
    dips = found["cold-start dips after the SFT->RL switch, then recovers"]
    dip, recovery = dips.tests
    assert dip.interval.mean == pytest.approx(0.2) and dip.verdict == HOLDS
    assert recovery.verdict == HOLDS and dips.verdict == HOLDS
    assert found["Robustness to flipped rewards (p = 0.2)"].verdict == HOLDS
    lam = found["lam robustness"]
    assert [(t.comparison, t.verdict) for t in lam.tests] == [("bridge-lam0.3 - bridge", HOLDS),
                                                              ("bridge-lam0.7 - bridge", FAILS)]
    assert lam.verdict == FAILS
    assert found["The meta-objective matters"].verdict == HOLDS  # +15 points over bridge-meta-off


def test_lam_robustness_holds_only_when_every_ci_is_within_the_margin(tmp_path: Path) -> None:
    # lam 0.3 = bridge's share, with each seed's own 3 flipped problems: a narrow CI around 0
    found, _ = measure(tmp_path / "a", build(tmp_path / "a", {"bridge": 0.6, "bridge-lam0.3": 0.6}), lam_sweep=[0.3])
    (t,) = found["lam robustness"].tests
    assert -0.05 < t.interval.lo < 0 < t.interval.hi < 0.05 and t.verdict == HOLDS
    # seeds that disagree (+8, -8, +6, -6, 0 points): a CI across 0 and wider than the margin
    swing = [0.68, 0.52, 0.66, 0.54, 0.60]
    found, _ = measure(tmp_path / "b", build(tmp_path / "b", {"bridge": 0.6, "bridge-lam0.3": swing}), lam_sweep=[0.3])
    (t,) = found["lam robustness"].tests
    assert t.interval.lo < -0.05 and t.interval.hi > 0.05 and t.verdict == UNCLEAR


def test_collapsed_runs_are_kept_in_the_numbers_and_named(tmp_path: Path) -> None:
    recs = build(tmp_path, SOLVED, collapsed=("bridge-s1", "bridge-s3"))
    found, rows = measure(tmp_path, recs)
    grpo = next(t for t in found["Final accuracy"].tests if t.comparison == "bridge - grpo")
    assert grpo.interval.seeds == 5 and grpo.flagged == ["bridge-s1 shadow_collapsed", "bridge-s3 shadow_collapsed"]
    assert rows["bridge"]["test_ci"]["seeds"] == 5 and len(rows["bridge"]["failed"]) == 2


def test_a_run_without_per_problem_grades_falls_back_to_seeds_only_and_says_so(tmp_path: Path) -> None:
    recs = build(tmp_path, {"bridge": 0.6, "grpo": 0.3})
    shutil.rmtree(tmp_path / "bridge-s2" / "completions")
    found, rows = measure(tmp_path, recs)
    t = next(t for t in found["Final accuracy"].tests if t.split == "test")
    assert t.basis == "5 seeds only (per-problem grades missing in 1 of 10 runs: bridge-s2)"
    assert t.interval.problems == 1 and t.verdict == HOLDS
    assert rows["bridge"]["test_ci"]["basis"].startswith("5 seeds only") and rows["grpo"]["test_ci"]["problems"] == 200
    text = write_outputs(tmp_path, settings(recipes=["grpo", "bridge"]), recs, plots=False).read_text()
    assert "† a CI over seeds only" in text and "| bridge | 5 | 60." in text and "]† |" in text


# -- the written report and results.json ----------------------------------------------------------

def test_report_and_results_json_hold_every_ci_and_verdict(tmp_path: Path) -> None:
    recs = build(tmp_path, SOLVED, collapsed=("bridge-s4",))
    report = write_outputs(tmp_path, settings(recipes=list(SOLVED)), recs)
    results = json.loads((tmp_path / "results.json").read_text())
    by = {c["claim"].split(":")[0]: c for c in results["claims"]}
    assert by["Final accuracy"]["verdict"] == FAILS
    grpo = next(t for t in by["Final accuracy"]["tests"] if t["comparison"] == "bridge - grpo" and t["split"] == "test")
    assert grpo["verdict"] == HOLDS and grpo["interval"]["lo"] > 0 and grpo["flagged"] == ["bridge-s4 shadow_collapsed"]
    table = {r["label"]: r for r in results["table"]}
    assert table["sft"]["test_ci"]["problems"] == N_PROBLEMS and table["sft"]["test_ci"]["lo"] < 0.75
    text = report.read_text()
    assert "| 1. Final accuracy: bridge above every baseline | **does not hold** |" in text
    assert "| bridge - sft | test | -14.2 [" in text and "flagged as failed, kept in every number: 1" in text
    assert "| bridge (1 failed: bridge-s4 shadow_collapsed) | 5 | 60." in text
    assert (tmp_path / "plots" / "accuracy_vs_step.png").is_file()


def test_meta_ablation_plans_bridge_without_the_meta_objective() -> None:
    import argparse

    from bridgerl.cli import build_parser
    from bridgerl.config_load import load_config

    ns = build_parser().parse_args(["compare", "--recipes", "bridge", "--meta-ablation", "--steps", "3"])
    assert ns.seeds == 5  # compare's default: the CIs resample seeds
    plan = plan_runs(ns, load_config())
    assert [p.name for p in plan[:2]] == ["bridge-s0", f"{META_OFF}-s0"] and len(plan) == 10
    assert "bridge.meta=false" in plan[1].overrides and "recipe=bridge" in plan[1].overrides
    assert "bridge.meta=false" not in plan[0].overrides
    assert isinstance(ns, argparse.Namespace)


def test_gain_over_base_pairs_the_one_base_evaluation_with_every_seed(tmp_path: Path) -> None:
    """compare's base runs once (seed 0: greedy decoding does not depend on the seed); every recipe's
    gain over it is paired by problem across all its seeds, with a CI, in the table and results.json."""
    recs = build(tmp_path, {"grpo": 0.30, "sft": 0.75})
    base = write_run(tmp_path, "base-s0", "sft", {0: 0.25}, 0.0,
                     grades={"test": grades(0.25, 0, 99), "test_hard": grades(0.1, 0, 98)})
    recs.append(record(base, "base", "sft", 0))
    _, rows = measure(tmp_path, recs)
    sft, grpo = rows["sft"]["gain_ci"], rows["grpo"]["gain_ci"]
    assert sft["seeds"] == 5 and sft["problems"] == N_PROBLEMS  # one base evaluation, five seeds of sft
    assert sft["lo"] > 0.40 and sft["mean"] == pytest.approx(rows["sft"]["test"][0] - 0.25, abs=0.02)
    assert grpo["lo"] < 0.05 < grpo["hi"]  # 30% against 25%: +5 points, within its interval
    assert "base" not in {label for label, r in rows.items() if "gain_ci" in r}
    report = write_outputs(tmp_path, settings(recipes=["base", "grpo", "sft"]), recs).read_text()
    assert "| gain over base [95% CI] |" in report and "| 0.7 | +49.0 [+41.9, +56.1] |" in report
