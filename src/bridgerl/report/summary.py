"""What `bridgerl compare` measures and reports: time to accuracy, the cold-start dip, the table
numbers (mean ± std over seeds), the paper's claims as measured here, and report.md's text.

Plain functions of the run records and curves; compare.py plans and runs, then calls these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bridgerl.report.plots import Run, order_key, series

# The paper's Table (Qwen2.5-3B, average over 5 math benchmarks), for orientation only.
PAPER_AVG = {"base": 14.4, "sft": 27.9, "grpo": 32.2, "cold-start": 32.2, "alternate": 33.4, "mix": 29.4,
             "chord": 32.5, "bridge": 36.0}
EPS = 1e-9


# -- measures -----------------------------------------------------------------------------------

def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1; None with fewer than 2 values)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None)


def time_to_reach(times: np.ndarray, accs: np.ndarray, target: float) -> float | None:
    """The first evaluation time at which accuracy >= target; None if it never does."""
    hits = np.flatnonzero(np.asarray(accs) >= target - EPS)
    return float(np.asarray(times)[hits[0]]) if len(hits) else None


def switch_step(run: Run) -> int | None:
    """cold-start's SFT->RL switch: the last logged step that was an SFT step (phase_sft=1)."""
    sft = [r["step"] for r in run.rows if r.get("phase_sft") == 1.0]
    if sft and any(r.get("phase_sft") == 0.0 for r in run.rows):
        return max(sft)
    return None


def stage_dip(steps: np.ndarray, accs: np.ndarray, switch: int) -> dict[str, float] | None:
    """Accuracy at the last evaluation at or before the switch, at the first one after it and the
    lowest one after it; drops are before - after (positive = accuracy fell)."""
    steps, accs = np.asarray(steps), np.asarray(accs)
    before, after = accs[steps <= switch], accs[steps > switch]
    if not len(before) or not len(after):
        return None
    lowest = int(np.argmin(after))
    recovered = np.flatnonzero(after[lowest:] >= before[-1] - EPS)
    return {"before": float(before[-1]), "first_after": float(after[0]), "min_after": float(after[lowest]),
            "first_after_step": float(steps[steps > switch][0]),
            "drop_first": float(before[-1] - after[0]), "drop_max": float(before[-1] - after[lowest]),
            "recovered_step": float(steps[steps > switch][lowest + recovered[0]]) if len(recovered) else None}


def largest_drop(accs: np.ndarray) -> float:
    """The largest fall between consecutive evaluations (0 for a non-decreasing curve)."""
    return float(max(0.0, np.max(-np.diff(accs)))) if len(accs) > 1 else 0.0


def summarize(records: list[dict[str, Any]], runs: dict[str, list[Run]] | None = None) -> list[dict[str, Any]]:
    """One table row per group: mean / std over seeds of the summaries; time to reach cold-start's
    mean final test accuracy from the curves (when cold-start ran and `runs` are given)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["label"], []).append(r)
    cold = [r["summary"].get("eval/accuracy") for r in groups.get("cold-start", [])]
    target = mean_std(cold)[0]
    rows = []
    for label in sorted(groups, key=order_key):
        rs = groups[label]
        s = [r["summary"] for r in rs]
        row = {"label": label, "recipe": rs[0]["recipe"], "n": len(rs),
               "test": mean_std([x.get("eval/accuracy") for x in s]),
               "hard": mean_std([x.get("eval_hard/accuracy") for x in s]),
               "start": mean_std([x.get("initial/eval/accuracy") for x in s]),
               "steps": mean_std([x.get("steps") for x in s]), "time_s": mean_std([x.get("time_s") for x in s]),
               "mem_mb": mean_std([r.get("peak_rss_mb_run") or r["summary"].get("peak_rss_mb") for r in rs]),
               "cuda_mb": mean_std([x.get("peak_cuda_mb") for x in s]),
               "failed": [f"{r['run_dir']} {r['summary']['status']}" for r in rs
                          if r["summary"].get("status", "ok") != "ok"],
               "target": target, "reach": None}
        if target is not None and runs is not None and label in runs:
            row["reach"] = [time_to_reach(*series(run, "eval/accuracy", "time_s"), target) for run in runs[label]]
        rows.append(row)
    return rows


def lr_selection(records: list[dict[str, Any]], lrs: list[float]) -> dict[str, dict[str, Any]]:
    """Per recipe of an lr sweep: mean val and test accuracy at each rate, and the chosen rate.

    The choice is the rate with the highest mean val accuracy over seeds (ties: the rate named
    first in `lrs`, then rates found only in the records, such as edge extensions, in record
    order); test accuracy is carried along for the report and never used to choose.
    """
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("lr") is None:
            continue
        row = out.setdefault(r["recipe"], {"val": {}, "test": {}, "failed": {}})
        row["val"].setdefault(r["lr"], []).append(r.get("val_accuracy"))
        row["test"].setdefault(r["lr"], []).append(r["summary"].get("eval/accuracy"))
        if r["summary"].get("status", "ok") != "ok":  # e.g. shadow_collapsed: flagged, not excluded
            row["failed"][r["lr"]] = row["failed"].get(r["lr"], 0) + 1
    for row in out.values():
        row["val"] = {lr: mean_std(v)[0] for lr, v in row["val"].items()}
        row["test"] = {lr: mean_std(v)[0] for lr, v in row["test"].items()}
        scored = [lr for lr in dict.fromkeys([*lrs, *row["val"]]) if row["val"].get(lr) is not None]
        row["chosen"] = max(scored, key=lambda lr: (row["val"][lr], -scored.index(lr))) if scored else None
    return out


def _selection_lines(selection: dict[str, dict[str, Any]], records: list[dict[str, Any]]) -> list[str]:
    rates = sorted({lr for row in selection.values() for lr in row["val"]}, reverse=True)
    base = next((r for r in records if r["label"] == "base"), None)
    base_line = (f" The base model: val {pct((base.get('val_accuracy'), None))}, test "
                 f"{pct((base['summary'].get('eval/accuracy'), None))}." if base else "")
    lines = ["## Learning-rate selection", "",
             "Each recipe's rate is the one with the highest final greedy accuracy on the **val** split "
             "(mean over seeds; ties go to the rate named first). Test accuracy is shown beside it and was "
             "not used to choose; '–' is a rate not run for that recipe; 'failed' counts runs whose status is not ok "
             "(a bridge run whose shadow collapsed), shown but not excluded. A choice marked *edge* is the "
             "highest or lowest rate tried for that recipe: a rate beyond it might do better." + base_line, "",
             "| recipe | " + " | ".join(f"lr {lr:g}: val / test" for lr in rates) + " | chosen |",
             "|---|" + "---|" * (len(rates) + 1)]
    for recipe in sorted(selection, key=order_key):
        row = selection[recipe]
        cells = [f"{pct((row['val'][lr], None))} / {pct((row['test'][lr], None))}"
                 + (f" ({row['failed'][lr]} failed)" if row["failed"].get(lr) else "") if lr in row["val"] else "–"
                 for lr in rates]
        chosen = row["chosen"]
        text = "–" if chosen is None else f"**{chosen:g}**" + (" (edge)" if chosen in (min(row["val"]), max(row["val"]))
                                                               and len(row["val"]) > 1 else "")
        lines.append(f"| {recipe} | " + " | ".join(cells) + f" | {text} |")
    return lines + [""]


# -- report -------------------------------------------------------------------------------------

def pct(ms: tuple[float | None, float | None]) -> str:
    mean, std = ms
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def num(ms: tuple[float | None, float | None], fmt: str = ".0f") -> str:
    mean, std = ms
    if mean is None:
        return "–"
    return f"{mean:{fmt}}" + (f" ± {std:{fmt}}" if std is not None and std > 0 else "")


def reach_text(reach: list[float | None] | None) -> str:
    if reach is None:
        return "–"
    hits = [t for t in reach if t is not None]
    if not hits:
        return f"never (0/{len(reach)})"
    return f"{np.mean(hits):.0f} s ({len(hits)}/{len(reach)})"


def versus(a_name: str, a: list[float], b_name: str, b: list[float]) -> str:
    """Neutral comparison of two groups' per-seed accuracies (fractions)."""
    a, b = [v for v in a if v is not None], [v for v in b if v is not None]
    if not a or not b:
        return f"{a_name} or {b_name} did not run: no comparison."
    d = 100 * (np.mean(a) - np.mean(b))
    head = f"{a_name} {pct(mean_std(a))} vs {b_name} {pct(mean_std(b))} (difference of means {d:+.1f} points)"
    if len(a) < 2 or len(b) < 2:
        return f"{head}; one seed on at least one side, so there is no seed spread: this alone cannot separate " \
               "the two from seed noise."
    se = 100 * np.sqrt(np.var(a, ddof=1) / len(a) + np.var(b, ddof=1) / len(b))
    if max(a + b) - min(a + b) <= EPS:
        return f"{head}; the same value in every seed of both: no difference."
    if min(a) > max(b):
        return f"{head}; {a_name} is above {b_name} in every seed: consistent with the paper's direction."
    if max(a) < min(b):
        return f"{head}; {a_name} is below {b_name} in every seed: the paper's direction is not reproduced here."
    return f"{head}; the seed ranges overlap (standard error of the difference {se:.1f} points): " \
           f"not distinguishable with {min(len(a), len(b))} seeds."


def _acc(records: list[dict[str, Any]], label: str, key: str = "eval/accuracy") -> list[float]:
    return [r["summary"].get(key) for r in records if r["label"] == label]


def claims(records: list[dict[str, Any]], rows: list[dict[str, Any]], runs: dict[str, list[Run]],
           settings: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(claim, what the paper reports, what was measured here) for each claim that this compare can test."""
    out = []
    measured = []
    for split, key in (("test", "eval/accuracy"), ("hard split", "eval_hard/accuracy")):
        for other in ("cold-start", "grpo"):
            measured.append(f"{split}: " + versus("bridge", _acc(records, "bridge", key), other,
                                                  _acc(records, other, key)))
    by = {r["label"]: r for r in rows}
    for label in ("bridge", "cold-start", "grpo"):
        r = by.get(label)
        if r and r["test"][0] is not None and r["start"][0] is not None and r["test"][0] < r["start"][0] - EPS:
            measured.append(f"note: {label} ends below its starting test accuracy ({pct(r['start'])} -> "
                            f"{pct(r['test'])}): training made the model worse, so an order among such runs says "
                            "little about the paper's claim.")
    out.append(("Final accuracy: bridge above cold-start and above RL-zero (grpo)",
                "Qwen2.5-3B, average of 5 benchmarks: bridge 36.0, cold-start 32.2, rl-zero 32.2.", measured))

    measured = []
    if "cold-start" in by and by["cold-start"]["target"] is not None:
        measured.append(f"target = cold-start's mean final test accuracy, {100 * by['cold-start']['target']:.1f}%; "
                        "time = wall-clock from the run's start (setup and evaluations included) to the first "
                        "evaluation at or above it; (k/n) = seeds that reached it.")
        for label in ("cold-start", "bridge", "grpo"):
            if label in by:
                measured.append(f"{label}: {reach_text(by[label]['reach'])}; its runs ended at "
                                f"{num(by[label]['time_s'])} s.")
        cs, br = by["cold-start"]["reach"] or [], (by.get("bridge") or {}).get("reach") or []
        cs_hits, br_hits = [t for t in cs if t is not None], [t for t in br if t is not None]
        start = by["cold-start"]["start"][0]
        if start is not None and by["cold-start"]["target"] <= start + EPS:
            measured.append("the starting model already scores at or above the target, so these times measure "
                            "setup and the first evaluation, not learning: no time comparison is made.")
        elif cs_hits and br_hits:
            ratio = np.mean(br_hits) / np.mean(cs_hits)
            measured.append(f"bridge's mean time to the target is {ratio:.2f}x cold-start's "
                            f"({'less' if ratio < 1 else 'more'} time; the paper reports 0.56x).")
        measured.append(f"budget: {_budget(settings)}; on equal steps the recipes' step costs differ, so their "
                        "wall times differ.")
    else:
        measured.append("cold-start did not run: no target.")
    out.append(("Time to reach cold-start's accuracy",
                "Qwen2.5-3B: bridge trains in 6.9 h against cold-start's 12.3 h (44% less) and ends more accurate "
                "(36.4 vs 32.2).", measured))

    measured = []
    dips = []
    for run in runs.get("cold-start", []):
        sw = switch_step(run)
        d = stage_dip(*series(run, "eval/accuracy", "step"), sw) if sw is not None else None
        if d is None:
            measured.append(f"{run.path.name}: no evaluation on both sides of the switch (switch step {sw}).")
            continue
        dips.append(d)
        if d["drop_max"] <= EPS:
            rec = "no evaluation after the switch is below the pre-switch level"
        elif d["recovered_step"] is not None:
            rec = f"back to the pre-switch level at step {d['recovered_step']:.0f}"
        else:
            rec = "not back to the pre-switch level by the end"
        measured.append(f"{run.path.name}: switch after step {sw}; accuracy {100 * d['before']:.1f}% before, "
                        f"{100 * d['first_after']:.1f}% at the first evaluation after (step "
                        f"{d['first_after_step']:.0f}), lowest after {100 * d['min_after']:.1f}%; {rec}.")
    if dips:
        measured.append(f"drop at the first evaluation after the switch (positive = fell): "
                        f"{pct(mean_std([d['drop_first'] for d in dips]))} points; largest drop after it: "
                        f"{pct(mean_std([d['drop_max'] for d in dips]))} points (mean ± std over seeds).")
    for label in ("bridge", "grpo"):
        drops = [largest_drop(series(r, "eval/accuracy", "step")[1]) for r in runs.get(label, [])]
        if drops:
            measured.append(f"for contrast, {label}'s largest fall between consecutive evaluations: "
                            f"{pct(mean_std(drops))} points.")
    if not measured:
        measured.append("cold-start did not run.")
    out.append(("cold-start dips after the SFT->RL switch; bridge does not",
                "average of 5 benchmarks over epochs 1/3/6: cold-start 33.4 / 28.5 / 32.2, "
                "bridge 32.3 / 33.3 / 36.4.", measured))

    if settings.get("reward_noise"):
        p = settings["reward_noise"]
        out.append((f"Robustness to flipped rewards (p = {p})",
                    "20% of rewards flipped: bridge 32.9 vs RL 13.9.",
                    ["test: " + versus("bridge", _acc(records, "bridge"), "grpo", _acc(records, "grpo")),
                     "hard split: " + versus("bridge", _acc(records, "bridge", "eval_hard/accuracy"), "grpo",
                                             _acc(records, "grpo", "eval_hard/accuracy"))]))
    if settings.get("lam_sweep"):
        points = {r["label"]: r for r in rows if r["label"].startswith("bridge-lam") or r["label"] == "bridge"}
        means = [r["test"][0] for r in points.values() if r["test"][0] is not None]
        stds = [r["test"][1] for r in points.values() if r["test"][1] is not None]
        measured = [f"{label}: {pct(r['test'])}" for label, r in points.items()]
        if len(means) > 1:
            spread = 100 * (max(means) - min(means))
            line = f"the mean test accuracy spans {spread:.1f} points across lam"
            if stds:
                pooled = 100 * float(np.sqrt(np.mean(np.square(stds))))
                line += (f"; the pooled seed std within one lam is {pooled:.1f} points, so the spread across lam is "
                         f"{'within' if spread <= 2 * pooled else 'larger than'} about two seed standard deviations")
            else:
                line += "; one seed per lam, so there is no seed spread to compare it with"
            measured.append(line + ".")
        out.append(("lam robustness", "accuracy robust for lam in 0.3 to 0.7 (lam = 0.5 by default).", measured))
    return out


def _budget(settings: dict[str, Any]) -> str:
    parts = []
    if settings.get("steps") is not None:
        parts.append(f"{settings['steps']} optimizer steps per run")
    if settings.get("minutes") is not None:
        parts.append(f"{settings['minutes']:g} minutes of wall-clock per run")
    return " and ".join(parts) or "the config's train.steps"


def _timing_note(jobs: int) -> str:
    how = ("while the runs ran one after the other" if jobs == 1 else
           f"while {jobs} runs shared the machine at a time (--jobs {jobs}, each with its share of the CPU "
           "threads, so a run's wall time also depends on what ran beside it)")
    return (f"Wall times are measured on this machine {how}; on a shared machine they include other processes' "
            "load (per-phase times are in each run's metrics.jsonl as time/<phase>).")


def render_report(settings: dict[str, Any], records: list[dict[str, Any]], rows: list[dict[str, Any]],
                  claim_list: list[tuple[str, str, list[str]]], plot_files: list[Path],
                  selection: dict[str, dict[str, Any]] | None = None) -> str:
    cuda = any(r["cuda_mb"][0] is not None for r in rows)
    lines = [f"# bridgerl compare: {settings['name']}", "",
             f"- recipes: {', '.join(settings['recipes'])}; seeds: {settings['seeds']} (run.seed 0..{settings['seeds'] - 1}; "
             "task data fixed; base evaluated once)",
             f"- budget: {_budget(settings)}; task: {settings['task']}; model: {settings['model']}",
             f"- reward noise: {settings.get('reward_noise') or 0}; lam sweep: {settings.get('lam_sweep') or 'none'}"
             + (f"; lr sweep: {' '.join(f'{lr:g}' for lr in settings['lr_sweep'])}"
                + (", extended past the edges" if settings.get("lr_extend") else "") if settings.get("lr_sweep") else ""),
             f"- overrides: {' '.join(settings['overrides']) or 'none'}"
             + (f"; config file: {settings['config_file']}" if settings.get("config_file") else ""),
             f"- machine: {settings['machine']}; started {settings['started']}; runs at a time: {settings.get('jobs') or 1}"
             + (f"; this invocation took {settings['compare_time_s'] / 60:.1f} min" if "compare_time_s" in settings else ""),
             f"- runs finished: {len(records)}", "",
             "## Results", "",
             "Accuracy is greedy pass@1 in percent, mean ± sample std over seeds (no ± with one seed). "
             "'reach' is the wall-clock to the first evaluation at or above cold-start's mean final test "
             "accuracy (seeds that reached it). " + _timing_note(settings.get("jobs") or 1) + " The paper column "
             "is Qwen2.5-3B's 5-benchmark average: another model and other benchmarks, for the order only.", "",
             f"| recipe | seeds | test acc | hard acc | start test acc | steps | wall time (s) | "
             f"peak {'GPU' if cuda else 'RSS'} (MB) | reach cold-start acc | paper avg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        flag = f" ({len(r['failed'])} failed: {', '.join(r['failed'])})" if r["failed"] else ""
        paper = PAPER_AVG.get(r["label"])
        lines.append(f"| {r['label']}{flag} | {r['n']} | {pct(r['test'])} | {pct(r['hard'])} | {pct(r['start'])} | "
                     f"{num(r['steps'])} | {num(r['time_s'])} | {num(r['cuda_mb'] if cuda else r['mem_mb'])} | "
                     f"{reach_text(r['reach'])} | {paper if paper is not None else '–'} |")
    lines += [""] + (_selection_lines(selection, records) if selection else [])
    lines += ["## The paper's claims, as measured here", "",
              "Each claim states what the paper reports (other models, other scale) and what this compare measured. "
              "A difference counts as consistent with the paper only when it holds in every seed.", ""]
    failed = [f for r in rows for f in r["failed"]]
    if failed:
        lines += [f"Runs flagged as failed (kept in every number above): {', '.join(failed)}. A collapsed shadow "
                  "makes bridge's cooperative gain meaningless; read those runs' results with that in mind.", ""]
    for i, (claim, paper, measured) in enumerate(claim_list, 1):
        lines += [f"### {i}. {claim}", "", f"Paper: {paper}", "", "Measured:", ""]
        lines += [f"- {m}" for m in measured] + [""]
    if plot_files:
        lines += ["## Curves", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plot_files] + [""]
    return "\n".join(lines)
