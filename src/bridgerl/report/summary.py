"""What `bridgerl compare` measures and reports: time to accuracy, the cold-start dip, the table
numbers (mean ± std over seeds; their CIs come from report.claims), and report.md's text.

Plain functions of the run records and curves; compare.py plans and runs, then calls these
(the paper's claims, with their CIs and verdicts, are report.claims).
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
             "(mean over seeds; ties go to the rate named first). Sweep runs score val alone, so their test "
             "cells read '–' (runs made before that rule show the test accuracy they computed, never used to "
             "choose); '–' is also a rate not run for that recipe; 'failed' counts runs whose status is not ok "
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


def ci_text(ci: dict[str, Any] | None, signed: bool = False) -> str:
    """A mean with its 95% CI, in percent: `56.8 [52.1, 61.0]` (signed, for a difference: `+4.1 [-0.3, +8.0]`);
    † marks a CI over seeds only."""
    if ci is None:
        return "–"
    seeds_only = "†" if "only" in ci.get("basis", "") else ""
    f = "+.1f" if signed else ".1f"
    return f"{100 * ci['mean']:{f}} [{100 * ci['lo']:{f}}, {100 * ci['hi']:{f}}]{seeds_only}"


def reach_text(reach: list[float | None] | None) -> str:
    if reach is None:
        return "–"
    hits = [t for t in reach if t is not None]
    if not hits:
        return f"never (0/{len(reach)})"
    return f"{np.mean(hits):.0f} s ({len(hits)}/{len(reach)})"


def budget(settings: dict[str, Any]) -> str:
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
                  claim_lines: list[str], plot_files: list[Path], selection: dict[str, dict[str, Any]] | None = None
                  ) -> str:
    """report.md: settings, the table (means with 95% CIs), the lr selection, the claims (claim_lines,
    from report.claims.render_claims) and the plots."""
    cuda = any(r["cuda_mb"][0] is not None for r in rows)
    failed = [f for r in rows for f in r["failed"]]
    seeds_only = any("only" in (r.get(c) or {}).get("basis", "") for r in rows for c in ("test_ci", "hard_ci"))
    lines = [f"# bridgerl compare: {settings['name']}", "",
             f"- recipes: {', '.join(settings['recipes'])}; seeds: {settings['seeds']} (run.seed 0..{settings['seeds'] - 1}; "
             "task data fixed; base evaluated once)",
             f"- budget: {budget(settings)}; task: {settings['task']}; model: {settings['model']}",
             f"- reward noise: {settings.get('reward_noise') or 0}; lam sweep: {settings.get('lam_sweep') or 'none'}"
             + ("; meta-objective ablation: bridge-meta-off" if settings.get("meta_ablation") else "")
             + (f"; lr sweep: {' '.join(f'{lr:g}' for lr in settings['lr_sweep'])}"
                + (", extended past the edges" if settings.get("lr_extend") else "") if settings.get("lr_sweep") else ""),
             f"- overrides: {' '.join(settings['overrides']) or 'none'}"
             + (f"; config file: {settings['config_file']}" if settings.get("config_file") else ""),
             f"- machine: {settings['machine']}; started {settings['started']}; runs at a time: {settings.get('jobs') or 1}"
             + (f"; this invocation took {settings['compare_time_s'] / 60:.1f} min" if "compare_time_s" in settings else ""),
             f"- runs finished: {len(records)}" + (f"; flagged as failed, kept in every number: {len(failed)} "
                                                    f"({', '.join(failed)})" if failed else ""), "",
             "## Results", "",
             "Accuracy is greedy pass@1 in percent: the mean over seeds (and problems) with its 95% CI, a bootstrap "
             "over seeds and test problems (report/stats.py); 'seed std' is the sample std of the seeds' "
             "accuracies. 'gain over base' is the recipe's test accuracy minus the base model's, paired by "
             "problem (the base is greedy: its one evaluation pairs with every seed). 'reach' is the wall-clock to the first evaluation at or above cold-start's mean final "
             "test accuracy (seeds that reached it). " + _timing_note(settings.get("jobs") or 1) + " The paper "
             "column is Qwen2.5-3B's 5-benchmark average: another model and other benchmarks, for the order only.",
             ""]
    if seeds_only:
        lines += ["† a CI over seeds only: some of that group's runs have no per-problem grades of their final "
                  "evaluation (completions/final_<split>.jsonl; runs from before they were written).", ""]
    gains = any("gain_ci" in r for r in rows)
    lines += [f"| recipe | seeds | test acc [95% CI] | seed std | {'gain over base [95% CI] | ' if gains else ''}"
              f"hard acc [95% CI] | start test acc | steps | "
              f"wall time (s) | peak {'GPU' if cuda else 'RSS'} (MB) | reach cold-start acc | paper avg |",
              "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if gains else "")]
    for r in rows:
        flag = f" ({len(r['failed'])} failed: {', '.join(r['failed'])})" if r["failed"] else ""
        paper = PAPER_AVG.get(r["label"])
        std = "–" if r["test"][1] is None else f"{100 * r['test'][1]:.1f}"
        test, hard = (ci_text(r[c]) if r.get(c) else pct((r[k][0], None)) for c, k in (("test_ci", "test"),
                                                                                        ("hard_ci", "hard")))
        gain = (f"{ci_text(r.get('gain_ci'), signed=True)} | " if gains else "")
        lines.append(f"| {r['label']}{flag} | {r['n']} | {test} | {std} | {gain}{hard} | {pct(r['start'])} | "
                     f"{num(r['steps'])} | {num(r['time_s'])} | {num(r['cuda_mb'] if cuda else r['mem_mb'])} | "
                     f"{reach_text(r['reach'])} | {paper if paper is not None else '–'} |")
    lines += [""] + (_selection_lines(selection, records) if selection else []) + claim_lines
    if plot_files:
        lines += ["## Curves", "", "Lines: the mean over seeds; bands: its 95% CI (bootstrap over seeds).", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plot_files] + [""]
    return "\n".join(lines)
