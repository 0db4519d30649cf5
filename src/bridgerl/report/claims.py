"""The paper's claims, measured on one compare's runs as paired differences with 95% CIs.

Every claim is one or more paired differences (same seeds, same test problems) with the bootstrap
CI of `report.stats`, and a verdict: "holds" when the CI excludes 0 in the paper's direction, "does
not hold" when it excludes 0 in the other, else "not distinguishable". Runs whose status is not ok
(a collapsed shadow) count in every number and are named beside it; no run is ever dropped.

    1. final order: bridge - X > 0 for every baseline X that ran (test split decides; hard split shown)
    2. time to reach cold-start's mean final test accuracy: bridge - cold-start < 0 (restricted mean time)
    3. cold-start's dip after the SFT->RL switch (> 0) and its recovery by the end (> 0)
    4. reward noise (compare --reward-noise p): bridge - grpo > 0
    5. lam robustness (compare --lam-sweep): every bridge-lamX - bridge within +-LAM_MARGIN
    6. the meta-objective (compare --meta-ablation): bridge - bridge-meta-off > 0

Per problem: the final evaluation's grades, completions/final_<split>.jsonl (one line per problem
with its `id` and `grade`; trainers.loop.final_eval writes it). Where a run of a comparison lacks
that file (runs from before it was written), the comparison falls back to seeds only (each seed's
accuracy from summary.json) and says so. Curves (time to reach, the dip) are per seed only: the
periodic evaluations keep no per-problem grades.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridgerl.report.plots import Run, end_time, series
from bridgerl.report.stats import (UNCLEAR, Interval, bootstrap_mean, combine, equivalence, paired,
                                   verdict)
from bridgerl.report.summary import (EPS, budget, ci_text, largest_drop, mean_std, num, pct, reach_text, stage_dip,
                                     switch_step, time_to_reach)

SPLITS = {"test": ("test", "eval/accuracy"), "hard split": ("test_hard", "eval_hard/accuracy")}
BASELINES = ("cold-start", "grpo", "sft", "alternate", "mix", "luffy", "chord")
BASE = "base"  # compare's starting model: greedy, so one evaluation (seed 0) stands for every seed
META_OFF = "bridge-meta-off"  # compare --meta-ablation's group: bridge with bridge.meta=false
LAM_MARGIN = 0.05  # lam robustness holds when every lam's difference to lam=0.5 is within +-5 points (CI)
DIP_EVALS = 2  # the dip is measured at the mean of the first evaluations after the switch (the paper: epoch 3 of 6)


@dataclass
class Test:
    """One paired difference of a claim: a - b (or one group's own measure), its CI and verdict."""

    comparison: str
    split: str
    unit: str  # "points" (accuracy x 100) or "s"
    direction: int  # the paper's sign of the difference; 0 = no difference (within margin)
    interval: Interval | None
    verdict: str
    basis: str  # what was resampled: "5 seeds x 1000 problems", "5 seeds only (...)"
    flagged: list[str] = field(default_factory=list)  # runs of either group whose status is not ok (kept)
    decisive: bool = True  # counts toward the claim's verdict (hard-split rows are shown only)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "interval": self.interval.to_dict() if self.interval else None}


@dataclass
class Claim:
    title: str
    paper: str
    tests: list[Test]
    notes: list[str]

    @property
    def verdict(self) -> str:
        return combine([t.verdict for t in self.tests if t.decisive])

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.title, "paper": self.paper, "verdict": self.verdict,
                "tests": [t.to_dict() for t in self.tests], "measured": self.notes}


# -- measures on one curve ----------------------------------------------------------------------

def restricted_time(times: np.ndarray, accs: np.ndarray, target: float, horizon: float) -> float:
    """Time to the first evaluation at or above target, counted as `horizon` when that comes later or
    never: every run was watched up to the horizon, so each recipe is treated alike (the summand of
    a restricted mean survival time)."""
    t = time_to_reach(times, accs, target)
    return horizon if t is None else min(t, horizon)


def dip_recovery(steps: np.ndarray, accs: np.ndarray, switch: int, first: int = DIP_EVALS) -> dict[str, Any] | None:
    """Accuracy at the switch (the last evaluation at or before it), early after it (mean of the first
    `first` evaluations after it, the final one excluded unless it is the only one), and at the end
    (the final evaluation); dip = at_switch - early (positive = fell), recovery = final - early."""
    steps, accs = np.asarray(steps, dtype=float), np.asarray(accs, dtype=float)
    before, after = accs[steps <= switch], accs[steps > switch]
    if not len(before) or not len(after):
        return None
    early = after[:-1][:first] if len(after) > 1 else after
    return {"at_switch": float(before[-1]), "early": float(np.mean(early)), "final": float(after[-1]),
            "early_steps": steps[steps > switch][:len(early)].tolist(),
            "dip": float(before[-1] - np.mean(early)), "recovery": float(after[-1] - np.mean(early))}


# -- the evidence: per-problem grades and per-seed accuracies ------------------------------------

def final_grades(run_dir: Path, split: str) -> dict[str, float] | None:
    """{problem id: grade} of a run's final evaluation on a split; None if not saved (or unreadable)."""
    path = Path(run_dir) / "completions" / f"final_{split}.jsonl"
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return {str(r["id"]): float(r["grade"]) for r in rows}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class Evidence:
    """A compare's runs by group and seed, with their per-problem grades (read once)."""

    def __init__(self, runs: dict[str, list[Run]]):
        self.runs = {label: {r.seed if r.seed is not None else i: r for i, r in enumerate(rs)}
                     for label, rs in runs.items()}
        self._grades: dict[tuple[str, str], dict[int, dict[str, float] | None]] = {}

    def grades(self, label: str, split: str) -> dict[int, dict[str, float] | None]:
        if (label, split) not in self._grades:
            self._grades[label, split] = {s: final_grades(r.path, split) for s, r in self.runs[label].items()}
        return self._grades[label, split]

    def flagged(self, *labels: str) -> list[str]:
        return [f"{r.path.name} {r.summary['status']}" for label in labels for r in self.runs.get(label, {}).values()
                if r.summary.get("status", "ok") != "ok"]

    def difference(self, a: str, b: str | None, split: str = "test") -> tuple[Interval | None, str]:
        """The mean of a (minus b, paired) on a split, and what it resampled: seeds x problems when
        every run involved saved its grades, else each seed's accuracy (seeds only)."""
        split_name, key = SPLITS[split]
        labels = [a] if b is None else [a, b]
        if any(label not in self.runs for label in labels):
            return None, f"{' or '.join(x for x in labels if x not in self.runs)} did not run"
        grades = [self.grades(label, split_name) for label in labels]
        missing = [self.runs[label][s].path.name for label, g in zip(labels, grades) for s, v in g.items() if v is None]
        if b == BASE:
            grades[1] = _every_seed(grades[1], grades[0])
        if not missing:
            d, seeds, ids = paired(*grades)
            if not seeds:
                return None, "no seed in common"
            if ids:
                most = max(len(v) for g in grades for v in g.values())
                common = f" (the {len(ids)} of {most} problems every run has)" if len(ids) < most else ""
                return bootstrap_mean(d), f"{len(seeds)} seed{'s' * (len(seeds) > 1)} x {len(ids)} problems{common}"
        acc = [{s: r.summary.get(key) for s, r in self.runs[label].items() if r.summary.get(key) is not None}
               for label in labels]
        if b == BASE:
            acc[1] = _every_seed(acc[1], acc[0])
        seeds = sorted(set(acc[0]).intersection(*acc[1:]))
        if len(seeds) < 2:  # one value: nothing to resample
            return None, f"{len(seeds)} seed{'s' * (len(seeds) != 1)} and no per-problem grades: no interval"
        d = np.array([acc[0][s] - (acc[1][s] if b is not None else 0.0) for s in seeds])
        n_runs = sum(len(self.runs[label]) for label in labels)
        names = f": {', '.join(missing)}" if len(missing) <= 3 else ""
        why = f"per-problem grades missing in {len(missing)} of {n_runs} runs{names}" if missing else \
            "no problem in common"
        return bootstrap_mean(d), f"{len(seeds)} seeds only ({why})"

    def test(self, a: str, b: str, split: str = "test", direction: int = 1, margin: float | None = None,
             decisive: bool = True) -> Test:
        iv, basis = self.difference(a, b, split)
        v = equivalence(iv, margin) if margin is not None else verdict(iv, direction)
        return Test(f"{a} - {b}", split, "points", direction, iv, v, basis, self.flagged(a, b), decisive)


def _every_seed(base: dict[int, Any], seeds: dict[int, Any]) -> dict[int, Any]:
    """The starting model's one (greedy, seed-independent) evaluation, paired with every seed of the
    other group; a base evaluated per seed is left as it is."""
    return dict.fromkeys(seeds, next(iter(base.values()))) if len(base) == 1 else base


def add_intervals(rows: list[dict[str, Any]], ev: Evidence) -> None:
    """Each table row's mean test and hard-split accuracy with its 95% CI (row["test_ci"], ["hard_ci"]), and
    its test gain over the base model, paired by problem, with its CI (row["gain_ci"]; where base ran)."""
    for row in rows:
        for split, col in (("test", "test_ci"), ("hard split", "hard_ci")):
            iv, basis = ev.difference(row["label"], None, split)
            row[col] = {**iv.to_dict(), "basis": basis} if iv is not None else None
        if BASE in ev.runs and row["label"] != BASE:  # the gain over the starting model, same problems
            iv, basis = ev.difference(row["label"], BASE, "test")
            row["gain_ci"] = {**iv.to_dict(), "basis": basis} if iv is not None else None


# -- the claims ---------------------------------------------------------------------------------

def claims(rows: list[dict[str, Any]], ev: Evidence, settings: dict[str, Any]) -> list[Claim]:
    """The claims this compare can test (see the module doc), in the paper's order."""
    by = {r["label"]: r for r in rows}
    out = [_final_order(ev, by), _time_to_target(ev, by, settings), _dip(ev)]
    if settings.get("reward_noise"):
        p = settings["reward_noise"]
        out.append(Claim(f"Robustness to flipped rewards (p = {p:g}): bridge above grpo",
                         "20% of rewards flipped: bridge 32.9 vs RL 13.9.",
                         [ev.test("bridge", "grpo"), ev.test("bridge", "grpo", "hard split", decisive=False)],
                         [f"every sampled reward flipped with probability {p:g} in every recipe that samples one."]))
    if settings.get("lam_sweep"):
        out.append(_lam(ev, by))
    if META_OFF in ev.runs:
        out.append(Claim("The meta-objective matters: bridge above bridge with bridge.meta=false",
                         "Qwen3-8B-Base: 49.9 with it, 40.3 without (w trained like theta).",
                         [ev.test("bridge", META_OFF), ev.test("bridge", META_OFF, "hard split", decisive=False)],
                         ["bridge.meta=false: w trained with theta's loss, without the meta-gradient "
                          "(-lam grad L2), as in the paper's ablation; everything else as bridge."]))
    return out


def _final_order(ev: Evidence, by: dict[str, dict[str, Any]]) -> Claim:
    others = [b for b in BASELINES if b in ev.runs]
    tests = [ev.test("bridge", b) for b in others] + [ev.test("bridge", b, "hard split", decisive=False)
                                                     for b in others]
    notes = [] if "bridge" in ev.runs else ["bridge did not run: no comparison."]
    for label in ("bridge", *others):
        r = by.get(label)
        if r and r["test"][0] is not None and r["start"][0] is not None and r["test"][0] < r["start"][0] - EPS:
            notes.append(f"{label} ends below its starting test accuracy ({pct(r['start'])} -> {pct(r['test'])}): "
                         "training made it worse, so an order against it says little about the paper's claim.")
    return Claim("Final accuracy: bridge above every baseline",
                 "Qwen2.5-3B, average of 5 benchmarks: bridge 36.0; cold-start 32.2, rl-zero 32.2, sft 27.9, "
                 "alternate 33.4, mix 29.4, chord 32.5.", tests if "bridge" in ev.runs else [], notes)


def _time_to_target(ev: Evidence, by: dict[str, dict[str, Any]], settings: dict[str, Any]) -> Claim:
    title = "Time to reach cold-start's accuracy: bridge faster than cold-start"
    paper = ("Qwen2.5-3B: bridge trains in 6.9 h against cold-start's 12.3 h (44% less) and ends more accurate "
             "(36.4 vs 32.2).")
    cold = by.get("cold-start")
    if cold is None or cold["target"] is None:
        return Claim(title, paper, [], ["cold-start did not run: no target."])
    target = cold["target"]
    notes = [f"target = cold-start's mean final test accuracy, {100 * target:.1f}%; time = wall-clock from the "
             "run's start (setup and evaluations included) to the first evaluation at or above it; "
             "(k/n) = seeds that reached it."]
    notes += [f"{label}: {reach_text(by[label]['reach'])}; its runs ended at {num(by[label]['time_s'])} s."
              for label in ("cold-start", "bridge", "grpo") if label in by]
    if cold["start"][0] is not None and target <= cold["start"][0] + EPS:
        notes.append("the starting model already scores at or above the target, so these times measure setup "
                     "and the first evaluation, not learning: no time comparison is made.")
        return Claim(title, paper, [], notes)
    if "bridge" not in ev.runs:
        return Claim(title, paper, [], notes + ["bridge did not run."])
    pair = [ev.runs["bridge"], ev.runs["cold-start"]]
    ends = [end_time(r) for g in pair for r in g.values()]
    seeds = sorted(pair[0].keys() & pair[1].keys())
    if not seeds or any(e is None for e in ends):
        return Claim(title, paper, [], notes + ["no paired seeds with timed curves."])
    horizon = min(ends)
    t = [{s: restricted_time(*series(g[s], "eval/accuracy", "time_s"), target, horizon) for s in seeds} for g in pair]
    iv = bootstrap_mean(np.array([t[0][s] - t[1][s] for s in seeds]))
    test = Test("bridge - cold-start", "test", "s", -1, iv, verdict(iv, -1), f"{len(seeds)} seeds only (curves)",
                ev.flagged("bridge", "cold-start"))
    notes.append(f"restricted mean time to the target (a seed that had not reached it by {horizon:.0f} s, the "
                 f"shortest of these runs, counts as {horizon:.0f} s): bridge {np.mean(list(t[0].values())):.0f} s, "
                 f"cold-start {np.mean(list(t[1].values())):.0f} s; the paper's ratio is 0.56x.")
    notes.append(f"budget: {budget(settings)}; on equal steps the recipes' step costs differ, so their wall "
                 "times differ.")
    return Claim(title, paper, [test], notes)


def _dip(ev: Evidence) -> Claim:
    title = "cold-start dips after the SFT->RL switch, then recovers"
    paper = "average of 5 benchmarks over epochs 1/3/6: cold-start 33.4 / 28.5 / 32.2, bridge 32.3 / 33.3 / 36.4."
    notes, dips = [], {}
    for seed, run in ev.runs.get("cold-start", {}).items():
        sw = switch_step(run)
        steps, accs = series(run, "eval/accuracy", "step")
        d = dip_recovery(steps, accs, sw) if sw is not None else None
        if d is None:
            notes.append(f"{run.path.name}: no evaluation on both sides of the switch (switch step {sw}).")
            continue
        dips[seed] = d
        low = stage_dip(steps, accs, sw)
        notes.append(f"{run.path.name}: switch after step {sw}; {100 * d['at_switch']:.1f}% at the switch, "
                     f"{100 * d['early']:.1f}% early after it (step{'s' * (len(d['early_steps']) > 1)} "
                     f"{', '.join(f'{s:.0f}' for s in d['early_steps'])}),"
                     f" lowest after {100 * low['min_after']:.1f}%, {100 * d['final']:.1f}% at the end.")
    if not ev.runs.get("cold-start"):
        return Claim(title, paper, [], ["cold-start did not run."])
    tests = []
    if dips:
        basis = f"{len(dips)} seed{'s' * (len(dips) > 1)} only (curves)"
        flagged = ev.flagged("cold-start")
        for name, key in (("dip: at the switch - early after it", "dip"),
                          ("recovery: end - early after it", "recovery")):
            iv = bootstrap_mean(np.array([d[key] for d in dips.values()]))
            tests.append(Test(f"cold-start {name}", "test", "points", 1, iv, verdict(iv, 1), basis, flagged))
    for label in ("bridge", "grpo"):
        drops = [largest_drop(series(r, "eval/accuracy", "step")[1]) for r in ev.runs.get(label, {}).values()]
        if drops:
            notes.append(f"for contrast, {label}'s largest fall between consecutive evaluations: "
                         f"{pct(mean_std(drops))} points (mean ± std over seeds).")
    return Claim(title, paper, tests, notes)


def _lam(ev: Evidence, by: dict[str, dict[str, Any]]) -> Claim:
    points = sorted((lab for lab in ev.runs if lab.startswith("bridge-lam")),
                    key=lambda s: float(s[len("bridge-lam"):]))
    notes = [f"{label}: {ci_text(by[label].get('test_ci'))}" for label in ["bridge", *points] if label in by]
    notes.append(f"robust = every lam's paired difference to lam = 0.5 (the bridge group) has its 95% CI within "
                 f"±{100 * LAM_MARGIN:.0f} points; a CI that excludes 0 means accuracy depends on lam.")
    tests = [ev.test(p, "bridge", margin=LAM_MARGIN, direction=0) for p in points] if "bridge" in ev.runs else []
    if "bridge" not in ev.runs:
        notes.append("no bridge runs at the default lam (0.5) to compare with.")
    return Claim("lam robustness: accuracy does not depend on lam in 0.3-0.7",
                 "accuracy robust for lam in 0.3 to 0.7 (lam = 0.5 by default).", tests, notes)


# -- text -----------------------------------------------------------------------------------------

def _diff_text(t: Test) -> str:
    if t.interval is None:
        return "–"
    f = (lambda v: f"{100 * v:+.1f}") if t.unit == "points" else (lambda v: f"{v:+.0f}")
    return f"{f(t.interval.mean)} [{f(t.interval.lo)}, {f(t.interval.hi)}] {t.unit}"


def render_claims(claim_list: list[Claim]) -> list[str]:
    lines = ["## The paper's claims, as measured here", "",
             "Each claim is a paired difference (same seeds; for accuracies also the same test problems) with its "
             "95% CI: a bootstrap that draws seeds and, independently, problems with replacement, the same draws "
             "for both sides, widened for few seeds (see `bridgerl/report/stats.py`). A claim **holds** when the "
             "CI excludes 0 in the paper's direction, **does not hold** when it excludes 0 in the other, and is "
             "**not distinguishable** otherwise; a claim of several comparisons holds only if every test-split one "
             "does. Runs flagged as failed (a collapsed shadow) are kept in every number and named.", ""]
    few = min((t.interval.seeds for c in claim_list for t in c.tests if t.interval is not None), default=5)
    if few < 5:
        lines += [f"Only {few} seed{'s' * (few != 1)} in some comparison: with so few, the bootstrap's seed part is "
                  "about the range of the seeds' values, narrower than a t interval; read its verdicts with care "
                  "(5 or more seeds).", ""]
    lines += ["| claim | verdict |", "|---|---|"]
    lines += [f"| {i}. {c.title} | **{c.verdict if c.tests else UNCLEAR + ' (not measured)'}** |"
              for i, c in enumerate(claim_list, 1)]
    lines.append("")
    for i, c in enumerate(claim_list, 1):
        lines += [f"### {i}. {c.title}: {c.verdict if c.tests else 'not measured'}", "", f"Paper: {c.paper}", ""]
        if c.tests:
            lines += ["| comparison | split | difference, 95% CI | resampled | verdict | flagged runs (kept) |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {t.comparison} | {t.split} | {_diff_text(t)} | {t.basis} | "
                      f"{t.verdict if t.decisive else t.verdict + ' (shown, not counted)'} | "
                      f"{', '.join(t.flagged) or '–'} |" for t in c.tests]
            lines.append("")
        lines += [f"- {n}" for n in c.notes] + [""]
    return lines
