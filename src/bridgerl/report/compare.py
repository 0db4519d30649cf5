"""`bridgerl compare`: the paper's baselines on one task, model, data and budget, over seeds.

    bridgerl compare --recipes base grpo cold-start bridge --seeds 3 --steps 200 [--jobs 2] [CONFIG.yaml] [k=v ...]

Every run is `trainers.loop.train(cfg)` in this process, one after the other, into
`<run.output_dir>/compare-<name>/<recipe>-s<seed>/`; a run whose summary.json exists is skipped,
so an interrupted compare resumes (and a run cut off midway continues from its last checkpoint,
resume=true, where train.save_every wrote one). Afterwards (and after every finished run) the folder holds
results.json, report.md (table, time-to-accuracy, the paper's claims as measured here) and plots/.

With --jobs N > 1 the runs still to do go to N concurrent child processes instead
(`python -m bridgerl train` with the same overrides plus log.progress=false), each with
OMP_NUM_THREADS = cpus // N (tiny models gain little from a second torch thread, so two 1-thread runs
finish a multi-seed comparison sooner than one 2-thread run) and its output in `<name>-s<seed>.log`
beside its run folder. Results are recorded in plan order either way. A failed child stops further
launches; the running ones finish, and compare names the failed run and its log and exits non-zero.

Choices, stated once:
- "base" is `train.steps=0`: the starting model's evaluation. Greedy decoding does not depend on
  the seed, so it runs once (seed 0).
- The task data seed (task.*.seed) stays fixed; only run.seed varies, so every run sees the same
  problems and differs in initialisation of the adapter, sampling and batch order.
- --minutes sets train.max_minutes (wall time from the run's start, setup and evaluations
  included) and train.steps to 1,000,000 (or --steps, if also given, as a cap). cold-start then
  switches to RL after as many SFT steps as the same-seed `sft` run finished in the first half of
  its training time (unless baseline.sft_steps is set).
- --reward-noise applies to every recipe that samples rewards (all but base and sft).
- --meta-ablation adds the group bridge-meta-off (bridge.meta=false), the paper's ablation. The
  report's CIs and verdicts (report.claims, report.stats) pair runs by seed and by test problem.
- Peak memory is measured per run: the process peak RSS is reset before each run (Linux
  /proc/self/clear_refs); without that, sequential runs would inherit each other's peaks. A child
  process's peak is its own ru_maxrss, from os.wait4 (RUSAGE_CHILDREN would merge all children).
- --lr-sweep X Y ... runs every recipe at each optim.lr (groups `<recipe>-lr<X>`) and chooses each
  recipe's rate by the mean over seeds of its final model's greedy accuracy on the task's `val`
  split (ties go to the rate named first). Sweep runs use eval.split=val: they score val alone, at
  the start and the end, and compute no test number, so none is seen while choosing (a sweep run
  made before that rule is scored on val here, cached in its compare.json, and still shows its test
  accuracy, which was never used to choose). With --lr-extend, a recipe
  whose best val rate is the highest or lowest it has tried also runs the next rate past it on the
  1-3-10 series (1e-3 -> 3e-3, 1e-4 -> 3e-5), until its best is inside the rates tried (at most
  `lr_sweep.LR_EXTEND_MAX` more per recipe). The chosen rates are in results.json ("lr_selection") and the
  report; `config.RECIPE_LR` holds the testbed's.
- --jobs > 1 refuses --minutes: concurrent runs slow each other, so equal wall-clock budgets would
  buy unequal work, and cold-start's switch step needs the same-seed sft run finished first.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TaskID, TextColumn,
                           TimeElapsedColumn)
from rich.text import Text

from bridgerl.config import RECIPES, Config, ConfigError, keys_unread_by
from bridgerl.config_load import load_config, split_config_args
from bridgerl.report.jobs import Children, last_line, thread_env
from bridgerl.report.claims import META_OFF, Evidence, add_intervals, claims, render_claims
from bridgerl.report.plots import Run, group_runs, load_run, order_key, plot_runs
from bridgerl.report.lr_sweep import lr_extensions, lr_of, val_accuracy
from bridgerl.report.summary import EPS, lr_selection, render_report, summarize
from bridgerl.tasks import build_task
from bridgerl.tasks.base import VAL
from bridgerl.utils.logging import quiet_transformers
from bridgerl.utils.rundir import config_changes, finished

console = Console(stderr=True)

DEFAULT_RECIPES = ("base", "sft", "grpo", "cold-start", "alternate", "mix", "luffy", "chord", "bridge")
NO_REWARD = {"base", "sft"}  # recipes that never sample a reward (reward noise does not apply)
WALL_CLOCK_STEPS = 1_000_000
SIDECAR = "compare.json"  # per run: what compare measured itself (peak memory)


@dataclass
class PlannedRun:
    label: str  # the group: recipe name, or bridge-lam0.3 for a sweep point
    recipe: str
    seed: int
    overrides: list[str] = field(default_factory=list)  # this run's own overrides (after the user's)

    @property
    def name(self) -> str:
        return f"{self.label}-s{self.seed}"


# -- planning -----------------------------------------------------------------------------------

def plan_runs(ns: argparse.Namespace, base_cfg: Config) -> list[PlannedRun]:
    recipes = list(dict.fromkeys(ns.recipes or DEFAULT_RECIPES))
    unknown = [r for r in recipes if r != "base" and r not in RECIPES]
    if unknown:
        raise ConfigError(f"unknown recipe(s) {', '.join(unknown)}; choose from: base, {', '.join(RECIPES)}")
    if ns.seeds < 1:
        raise ConfigError("--seeds must be >= 1")
    if ns.minutes is not None and ns.minutes <= 0:
        raise ConfigError("--minutes must be > 0")
    if ns.jobs < 1:
        raise ConfigError("--jobs must be >= 1")
    if ns.jobs > 1 and ns.minutes is not None:
        raise ConfigError("--jobs > 1 cannot be combined with --minutes: concurrent runs slow each other (unequal "
                          "work for equal wall-clock) and cold-start needs sft's finished run; use --steps or --jobs 1")
    if ns.minutes is not None and "cold-start" in recipes and "sft" not in recipes \
            and base_cfg.baseline.sft_steps is None:
        raise ConfigError("cold-start under --minutes needs its SFT->RL switch step: add sft to --recipes "
                          "(cold-start then switches after half of sft's steps) or set baseline.sft_steps=N")
    recipes.sort(key=lambda r: order_key(r))  # sft before cold-start (wall-clock switch), paper order
    budget = []
    if ns.steps is not None:
        budget.append(f"train.steps={ns.steps}")
    if ns.minutes is not None:
        budget += [f"train.max_minutes={ns.minutes}"] + ([] if ns.steps is not None else
                                                         [f"train.steps={WALL_CLOCK_STEPS}"])
    noise = [f"rollout.reward_noise={ns.reward_noise}"] if ns.reward_noise is not None else []
    lrs = list(dict.fromkeys(ns.lr_sweep or []))
    if lrs and ns.lam_sweep:
        raise ConfigError("--lr-sweep and --lam-sweep cannot be combined: sweep one at a time")
    if ns.lr_extend and not lrs:
        raise ConfigError("--lr-extend extends an lr sweep: give the rates with --lr-sweep (e.g. --lr-sweep 1e-3 1e-4)")
    if any(lr <= 0 for lr in lrs):
        raise ConfigError("--lr-sweep values must be > 0 (e.g. --lr-sweep 1e-3 3e-4 1e-4)")
    if lrs and not build_task(base_cfg.task).split(VAL):
        raise ConfigError(f"--lr-sweep chooses on the val split, and task {base_cfg.task.name!r} has none "
                          "(set one with task.arith.n_val, task.math.val_path or task.user.val)")

    blind = ["eval.split=val"] if lrs else []  # sweep runs score val only: no test number is seen while choosing
    labels: list[tuple[str, str, list[str]]] = []
    for r in recipes:
        if r == "base":
            labels.append(("base", "sft", ["train.steps=0", *blind]))
        elif lrs:
            extra = budget + ([] if r in NO_REWARD else noise)
            labels += [(f"{r}-lr{lr:g}", r, [*extra, *blind, f"optim.lr={lr}"]) for lr in lrs]
        else:
            labels.append((r, r, budget + ([] if r in NO_REWARD else noise)))
    for lam in ns.lam_sweep or []:
        if "bridge" in recipes and abs(lam - base_cfg.bridge.lam) < EPS:
            console.print(f"lam sweep: lam={lam:g} is the bridge runs' own lam; they serve as that point")
            continue
        labels.append((f"bridge-lam{lam:g}", "bridge", budget + noise + [f"bridge.lam={lam}"]))
    if ns.meta_ablation:  # the paper's ablation: bridge without w's meta-gradient, same everything else
        labels.append((META_OFF, "bridge", budget + noise + ["bridge.meta=false"]))

    plan = []
    for seed in range(ns.seeds):
        for label, recipe, extra in labels:
            if label == "base" and seed > 0:
                continue
            plan.append(PlannedRun(label, recipe, seed, [f"recipe={recipe}", *extra]))
    return plan


def run_overrides(user: list[str], pr: PlannedRun, compare_dir: Path) -> list[str]:
    """One run's overrides after the config file: the user's, the plan's, then where and how it runs."""
    # resume=true only for a folder left by an interrupted run: it continues from a checkpoint if one exists
    resume = (compare_dir / pr.name).is_dir() and not finished(compare_dir / pr.name)
    return [*user, *pr.overrides, f"run.output_dir={compare_dir}", f"run.name={pr.name}", f"run.seed={pr.seed}",
            "run.overwrite=true", f"resume={str(resume).lower()}"]


def run_config(path: str | None, user: list[str], pr: PlannedRun, compare_dir: Path) -> Config:
    return load_config(path, run_overrides(user, pr, compare_dir))


def child_argv(path: str | None, user: list[str], pr: PlannedRun, compare_dir: Path) -> list[str]:
    """The `bridgerl train` command line of one run in a child process (--jobs > 1); no progress bar."""
    return [sys.executable, "-m", "bridgerl", "train", *([path] if path else []),
            *run_overrides(user, pr, compare_dir), "log.progress=false"]


def cold_start_switch(sft_run_dir: Path) -> int:
    """SFT steps the sft run finished in the first half of its training time (wall-clock budgets)."""
    rows = [r for r in load_run(sft_run_dir).rows if r.get("time_s") is not None]
    if len(rows) < 2:
        return 1
    t0, t1 = rows[0]["time_s"], rows[-1]["time_s"]
    return max(1, sum(1 for r in rows[1:] if r["step"] > 0 and r["time_s"] <= (t0 + t1) / 2))


def config_mismatch(stored: dict[str, Any], planned: Config) -> list[str]:
    """Keys (present in both) where a finished run's config.yaml differs from the planned one.
    A run of zero steps (base) trains nothing, so its optimizer settings cannot differ in effect."""
    ignored = ("log.", "run.overwrite", "resume") + (("optim.", "baseline.") if planned.train.steps == 0 else ())
    return config_changes(stored, planned, ignored + keys_unread_by(planned.recipe))


# -- running ------------------------------------------------------------------------------------

class _EtaColumn(ProgressColumn):
    """Time left, from the per-recipe durations seen so far (counts down during a run)."""

    def render(self, task: Any) -> Text:
        eta_at = task.fields.get("eta_at")
        if eta_at is None:
            return Text("ETA ?", style="progress.remaining")
        left = max(0.0, eta_at - time.time())
        return Text(f"ETA {int(left // 3600)}:{int(left % 3600 // 60):02d}:{int(left % 60):02d}",
                    style="progress.remaining")


def _estimate(pr: PlannedRun, durations: dict[str, list[float]], minutes: float | None) -> float | None:
    if durations.get(pr.label):
        return float(np.mean(durations[pr.label]))
    if minutes is not None and pr.label != "base":
        return 60 * minutes
    known = [d for ds in durations.values() for d in ds]
    return float(np.mean(known)) if known else None


def run_compare(ns: argparse.Namespace) -> int:
    quiet_transformers()  # this process loads models too (the base run, val scoring): no third-party bars
    path, user = split_config_args(ns.args or [])
    base_cfg = load_config(path, user)
    plan = plan_runs(ns, base_cfg)
    compare_dir = Path(base_cfg.run.output_dir) / f"compare-{ns.name}"
    compare_dir.mkdir(parents=True, exist_ok=True)
    if ns.minutes is not None and (base_cfg.bridge.lam_schedule != "constant" or base_cfg.optim.scheduler != "constant"):
        console.print("[yellow]--minutes: schedules over train.steps (lam_schedule, optim.scheduler) will not "
                      "complete, since train.steps is set far beyond what the time allows[/yellow]")
    settings = {"name": ns.name, "recipes": sorted({p.label for p in plan}, key=order_key), "seeds": ns.seeds,
                "steps": ns.steps, "minutes": ns.minutes, "reward_noise": ns.reward_noise, "lam_sweep": ns.lam_sweep,
                "meta_ablation": ns.meta_ablation, "lr_sweep": ns.lr_sweep, "lr_extend": ns.lr_extend,
                "jobs": ns.jobs, "config_file": path, "overrides": user, "task": base_cfg.task.name,
                "model": base_cfg.model.name_or_path, "machine": f"{platform.machine()} {platform.processor()}".strip(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = _Results(compare_dir, settings)
    t_all = time.perf_counter()
    columns = [TextColumn("[bold cyan]compare[/bold cyan] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), _EtaColumn()]
    failed: list[tuple[PlannedRun, int]] = []  # (run, exit code) of failed child processes
    with Progress(*columns, console=console, disable=not base_cfg.log.progress) as progress:
        bar = progress.add_task("", total=len(plan))
        start = 0
        while True:
            if ns.jobs == 1:
                _run_in_process(plan, start, path, user, ns.minutes, base_cfg.baseline.sft_steps, out, progress, bar)
            else:
                failed = _run_children(plan, start, path, user, ns.jobs, out, progress, bar)
            extra = lr_extensions(plan, out.in_order(), ns.lr_sweep) if ns.lr_extend and not failed else []
            if not extra:
                break
            start = len(plan)
            plan += extra
            settings["recipes"] = sorted({p.label for p in plan}, key=order_key)
            progress.console.print(f"lr sweep: extending past the edge: {', '.join(p.name for p in extra)}")
            progress.update(bar, total=len(plan))
        progress.update(bar, description=f"stopped ({len(failed)} failed)" if failed else f"done ({len(plan)} runs)",
                        eta_at=time.time())
    if failed:
        return _report_failures(failed, compare_dir)
    settings["compare_time_s"] = time.perf_counter() - t_all
    report = write_outputs(compare_dir, settings, out.in_order())
    console.print(f"compare finished: {report}")
    return 0


@dataclass
class _Results:
    """Records of the runs done so far, by plan index; results.json and report.md rewritten after each."""
    compare_dir: Path
    settings: dict[str, Any]
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    durations: dict[str, list[float]] = field(default_factory=dict)  # label -> run times, for the ETA

    def add(self, i: int, pr: PlannedRun, user: list[str], skipped: bool) -> None:
        run_dir = self.compare_dir / pr.name
        record = {"label": pr.label, "recipe": pr.recipe, "seed": pr.seed, "run_dir": pr.name,
                  "overrides": [*user, *pr.overrides, f"run.seed={pr.seed}"], "skipped": skipped,
                  "summary": json.loads((run_dir / "summary.json").read_text())}
        if (run_dir / SIDECAR).is_file():
            record.update(json.loads((run_dir / SIDECAR).read_text()))
        if self.settings.get("lr_sweep"):
            if "val_accuracy" not in record:  # the run's own val score (eval.split=val), else one made here
                own = record["summary"].get("eval_val/accuracy")
                record["val_accuracy"] = own if own is not None else val_accuracy(run_dir)
                _update_sidecar(run_dir, val_accuracy=record["val_accuracy"])
            if pr.label != "base":  # base trains nothing: its rate means nothing
                record["lr"] = lr_of(pr)
        self.durations.setdefault(pr.label, []).append(record["summary"].get("time_s", 0.0))
        self.records[i] = record
        write_outputs(self.compare_dir, self.settings, self.in_order(), plots=False)

    def in_order(self) -> list[dict[str, Any]]:
        return [self.records[i] for i in sorted(self.records)]

    def eta(self, todo: list[PlannedRun], minutes: float | None, jobs: int = 1) -> float | None:
        remaining = [_estimate(p, self.durations, minutes) for p in todo]
        return time.time() + sum(remaining) / jobs if all(r is not None for r in remaining) else None


def _write_sidecar(run_dir: Path, peak_rss_mb: float | None) -> None:
    """What compare measured itself about a run (its own peak memory), beside the run's outputs."""
    (run_dir / SIDECAR).write_text(json.dumps({"peak_rss_mb_run": peak_rss_mb}))


def _update_sidecar(run_dir: Path, **values: Any) -> None:
    path = run_dir / SIDECAR
    stored = json.loads(path.read_text()) if path.is_file() else {}
    path.write_text(json.dumps({**stored, **values}))


def _finished(run_dir: Path, cfg: Config) -> bool:
    """True if run_dir holds a finished run of cfg; a finished run with other settings is a ConfigError."""
    if not finished(run_dir):  # no summary.json, or one marked interrupted (resumable)
        return False
    if diff := config_mismatch(load_run(run_dir).config, cfg):
        raise ConfigError(f"{run_dir} holds a finished run with other settings ({'; '.join(diff[:3])}); "
                          f"use another --name or delete that folder")
    return True


def _skip_line(i: int, n: int, run_dir: Path) -> str:
    return f"[{i + 1}/{n}] skipping {run_dir.name}: {run_dir}/summary.json exists (resuming)"


def _run_in_process(plan: list[PlannedRun], start: int, path: str | None, user: list[str], minutes: float | None,
                    sft_steps: int | None, out: _Results, progress: Progress, bar: TaskID) -> None:
    """The runs plan[start:], one after the other in this process."""
    from bridgerl.trainers.loop import train
    from bridgerl.utils.memory import reset_peak_memory, vm_hwm_mb

    for i in range(start, len(plan)):
        pr = plan[i]
        run_dir = out.compare_dir / pr.name
        if pr.recipe == "cold-start" and minutes is not None and sft_steps is None:
            pr.overrides.append(f"baseline.sft_steps={cold_start_switch(out.compare_dir / f'sft-s{pr.seed}')}")
        cfg = run_config(path, user, pr, out.compare_dir)
        skipped = _finished(run_dir, cfg)
        if skipped:
            progress.console.print(_skip_line(i, len(plan), run_dir))
        else:
            progress.update(bar, description=f"{pr.label} seed {pr.seed} ({i + 1}/{len(plan)})",
                            eta_at=out.eta(plan[i:], minutes))
            reset_peak_memory()
            train(cfg)
            _write_sidecar(run_dir, vm_hwm_mb())
        out.add(i, pr, user, skipped)
        progress.update(bar, advance=1)


def _run_children(plan: list[PlannedRun], start: int, path: str | None, user: list[str], jobs: int, out: _Results,
                  progress: Progress, bar: TaskID) -> list[tuple[PlannedRun, int]]:
    """The runs of plan[start:] not yet finished as up to `jobs` child processes; returns the failed
    ones with exit codes."""
    todo: deque[int] = deque()
    for i in range(start, len(plan)):  # finished runs first: other settings stop compare before anything starts
        pr = plan[i]
        run_dir = out.compare_dir / pr.name
        if _finished(run_dir, run_config(path, user, pr, out.compare_dir)):
            progress.console.print(_skip_line(i, len(plan), run_dir))
            out.add(i, pr, user, skipped=True)
            progress.update(bar, advance=1)
        else:
            todo.append(i)
    pool = Children(thread_env(jobs))
    failed: list[tuple[PlannedRun, int]] = []
    try:
        while todo or pool.running:
            while todo and len(pool.running) < jobs:
                i = todo.popleft()
                pool.start(i, child_argv(path, user, plan[i], out.compare_dir), _log(out.compare_dir, plan[i]))
            running = ", ".join(plan[i].name for i in pool.running)
            status = f"waiting for {running} ({failed[0][0].name} failed)" if failed else f"running {running}"
            progress.update(bar, description=status,
                            eta_at=out.eta([plan[i] for i in [*pool.running, *todo]], None, jobs))
            i, code, peak_mb = pool.wait_any()
            if code != 0:
                failed.append((plan[i], code))
                todo.clear()  # launch nothing more; the running ones finish and are recorded
                continue
            _write_sidecar(out.compare_dir / plan[i].name, peak_mb)
            out.add(i, plan[i], user, skipped=False)
            progress.update(bar, advance=1)
    finally:
        pool.stop()
    return failed


def _report_failures(failed: list[tuple[PlannedRun, int]], compare_dir: Path) -> int:
    """One line per failed run, naming its log; exit code 2 if the first failed on a user error (cli.py), else 1."""
    for pr, code in failed:
        log = _log(compare_dir, pr)
        print(f"bridgerl compare: error: run {pr.name} failed with exit code {code} ({last_line(log)}); "
              f"its output is in {log}", file=sys.stderr)
    return 2 if failed[0][1] == 2 else 1


def _log(compare_dir: Path, pr: PlannedRun) -> Path:
    return compare_dir / f"{pr.name}.log"  # beside the run folder, which train() may recreate (run.overwrite)


# -- outputs ------------------------------------------------------------------------------------

def _runs(compare_dir: Path, records: list[dict[str, Any]]) -> dict[str, list[Run]]:
    """The runs as seeds of their plan groups (never grouped by folder name or recipe)."""
    return group_runs([load_run(compare_dir / r["run_dir"], r["label"], r["seed"]) for r in records])


def write_outputs(compare_dir: Path, settings: dict[str, Any], records: list[dict[str, Any]],
                  plots: bool = True) -> Path:
    """results.json, report.md and (with plots=True) plots/*.png; returns report.md's path."""
    compare_dir = Path(compare_dir)
    runs = _runs(compare_dir, records)
    evidence = Evidence(runs)
    rows = summarize(records, runs)
    add_intervals(rows, evidence)
    claim_list = claims(rows, evidence, settings)
    plot_files = plot_runs([r for rs in runs.values() for r in rs], compare_dir / "plots") if plots else \
        sorted((compare_dir / "plots").glob("*.png"))
    selection = lr_selection(records, settings["lr_sweep"]) if settings.get("lr_sweep") else None
    results = {"settings": settings, "runs": records, "table": rows, "claims": [c.to_dict() for c in claim_list]}
    if selection is not None:
        results["lr_selection"] = {r: row["chosen"] for r, row in selection.items()}
    (compare_dir / "results.json").write_text(json.dumps(results, indent=2))
    report = compare_dir / "report.md"
    report.write_text(render_report(settings, records, rows, render_claims(claim_list), plot_files, selection))
    return report
