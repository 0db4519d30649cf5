"""Run folders as `bridgerl train` leaves them, built by hand for the report tests (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml


def write_run(root: Path, name: str, recipe: str, evals: dict[int, float], final: float, *, steps: int = 4,
              dt: float = 1.0, sft_steps: int = 0, hard: float | None = None, status: str = "ok",
              grades: dict[str, list[float]] | None = None) -> Path:
    """config.yaml, metrics.jsonl and summary.json; rows 1..sft_steps are SFT steps (phase_sft=1).
    grades: per split ("test", "test_hard"), the final evaluation's grade of each problem, written as
    completions/final_<split>.jsonl with ids <split>-<i> (final / hard accuracy then come from them)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"recipe": recipe}))
    if grades:
        (d / "completions").mkdir()
        for split, gs in grades.items():
            (d / "completions" / f"final_{split}.jsonl").write_text(
                "".join(json.dumps({"id": f"{split}-{i}", "completion": "#1", "grade": g}) + "\n"
                        for i, g in enumerate(gs)))
        final = sum(grades["test"]) / len(grades["test"]) if "test" in grades else final
        hard = sum(grades["test_hard"]) / len(grades["test_hard"]) if "test_hard" in grades else hard
    rows = [{"step": 0, "time_s": 1.0, "eval/accuracy": evals.get(0)}]
    for s in range(1, steps + 1):
        row = {"step": s, "time_s": 1.0 + dt * s, "phase_sft": 1.0 if s <= sft_steps else 0.0}
        if s in evals and s < steps:
            row["eval/accuracy"] = evals[s]
        rows.append(row)
    rows.append({"step": steps, "eval/accuracy": final})  # train() logs the final evaluation without time_s
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"eval/accuracy": final, "eval_hard/accuracy": final / 2 if hard is None else hard,
               "initial/eval/accuracy": evals.get(0), "steps": steps, "time_s": 2.0 + dt * steps,
               "peak_rss_mb": 500.0, "status": status}
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def record(run_dir: Path, label: str, recipe: str, seed: int) -> dict:
    """compare's record of a finished run."""
    return {"label": label, "recipe": recipe, "seed": seed, "run_dir": run_dir.name, "overrides": [],
            "summary": json.loads((run_dir / "summary.json").read_text()), "peak_rss_mb_run": 100.0 + seed}


def settings(**kw) -> dict:
    """compare's settings (results.json "settings") for a report written from synthetic runs."""
    return {"name": "t", "recipes": [], "seeds": 5, "steps": 4, "minutes": None, "reward_noise": None,
            "lam_sweep": None, "config_file": None, "overrides": [], "task": "arith", "model": "embedded",
            "machine": "x86_64", "started": "now", **kw}
