"""`bridgerl compare --lr-sweep / --lr-extend`: scoring runs on the val split and extending the grid.

The choice itself (best mean val accuracy per recipe) is `report.summary.lr_selection`; the
protocol is described in `report.compare`'s module docstring and docs/decisions.md.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

from bridgerl.config_load import load_config
from bridgerl.report.summary import lr_selection
from bridgerl.tasks import build_task
from bridgerl.tasks.base import VAL

LR_EXTEND_MAX = 3  # --lr-extend: extra rates per recipe past its grid's edge


def lr_step(lr: float, up: bool) -> float:
    """The neighbour of `lr` on the 1-3-10 series (..., 1e-4, 3e-4, 1e-3, 3e-3, ...), above or below it."""
    e = math.floor(math.log10(lr)) - 1
    series = [m * 10.0 ** k for k in range(e, e + 3) for m in (1, 3)]
    return float(f"{min(x for x in series if x > lr * 1.0001):.0e}" if up else
                 f"{max(x for x in series if x < lr * 0.9999):.0e}")


def lr_extensions(plan: list[Any], records: list[dict[str, Any]], lrs: list[float]) -> list[Any]:
    """--lr-extend: one more rate for each recipe whose best val rate is at the edge of those it tried."""
    tried: dict[str, list[float]] = {}
    for pr in plan:
        if pr.label != "base":
            tried.setdefault(pr.recipe, []).append(lr_of(pr))
    extra = []
    for recipe, row in lr_selection(records, lrs).items():
        rates = sorted(set(tried.get(recipe, [])))
        if row["chosen"] is None or len(rates) < 2 or len(rates) >= len(set(lrs)) + LR_EXTEND_MAX:
            continue
        if row["chosen"] not in (rates[0], rates[-1]):
            continue
        new = lr_step(row["chosen"], up=row["chosen"] == rates[-1])
        for pr in [p for p in plan if p.recipe == recipe and p.label != "base" and lr_of(p) == row["chosen"]]:
            overrides = [o for o in pr.overrides if not o.startswith("optim.lr=")] + [f"optim.lr={new}"]
            extra.append(replace(pr, label=f"{recipe}-lr{new:g}", overrides=overrides))
    return extra


def lr_of(pr: Any) -> float:
    """The optim.lr override of a planned sweep run."""
    return float(next(o for o in pr.overrides if o.startswith("optim.lr=")).split("=", 1)[1])


def val_accuracy(run_dir: Path) -> float:
    """Greedy pass@1 of a run's final model on its task's val split (the run's own eval settings), for a
    sweep run made before sweep runs scored val themselves (eval.split=val)."""
    from bridgerl.config import ModelConfig
    from bridgerl.eval.evaluate import evaluate
    from bridgerl.models.loading import load
    from bridgerl.rollout.hf import HFEngine

    cfg = load_config(str(run_dir / "config.yaml"), [])
    task = build_task(cfg.task)
    model, tokenizer = load(ModelConfig(name_or_path=str(run_dir / "final"), dtype=cfg.model.dtype))
    res = evaluate(HFEngine(model, tokenizer), tokenizer, task, task.split(VAL),
                   max_new_tokens=cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens, batch_size=cfg.eval.batch_size)
    return res.accuracy
