"""The Python API: the CLI's train, eval and compare as functions, for scripts and notebooks.

    from bridgerl import Config, train, evaluate, compare

    result = train("configs/grpo.yaml", train={"steps": 50})          # or train(Config()), train({...})
    result.summary["eval/accuracy"], result.run_dir                   # summary.json's numbers, the run folder
    evaluate(result, split="val").accuracy                            # the trained model on another split

A config is None (the defaults), a `Config`, a mapping (nested, or with dotted keys) or a YAML path;
keyword overrides follow, one per top-level key (`recipe="grpo"`, `train={"steps": 2}`) or dotted
(`**{"train.steps": 2}`). From Python, `task.reward_funcs` may hold the functions themselves and
`task.user.train` (sft, val, test) a `datasets.Dataset` or a list of dicts.

User errors raise `bridgerl.UserError` subclasses (ConfigError, TaskError and its RewardError,
ModelLoadError) with the CLI's one-line message; nothing calls sys.exit, and a run that fails on
one leaves no run folder behind.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from bridgerl.config import Config, ConfigError
from bridgerl.config_load import load_config


class TrainResult(NamedTuple):
    summary: dict[str, Any]  # what summary.json holds: accuracies before and after, time, memory, status
    run_dir: Path  # <run.output_dir>/<run.name>: final/ (the model), metrics.jsonl, completions/, ...
    config: Config  # the config the run used


class CompareResult(NamedTuple):
    results: dict[str, Any]  # results.json: settings, runs, the table, the paper's claims as measured
    compare_dir: Path  # <run.output_dir>/compare-<name>: report.md, plots/, one folder per run


def make_config(config: Config | Mapping[str, Any] | str | Path | None = None, /, **overrides: Any) -> Config:
    """A validated Config from a Config, a mapping or a YAML path, then the keyword overrides."""
    if config is None or isinstance(config, (str, Path)):
        return load_config(config, values=overrides)
    if isinstance(config, Config):
        return load_config(base=config, values=overrides)
    if isinstance(config, Mapping):
        return load_config(values={**config, **overrides})
    raise ConfigError(f"a config is a bridgerl.Config, a dict or a YAML path, not a {type(config).__name__}")


def train(config: Config | Mapping[str, Any] | str | Path | None = None, /, **overrides: Any) -> TrainResult:
    """Run one recipe (cfg.recipe) end to end, as `bridgerl train`; returns its summary and run folder."""
    cfg = make_config(config, **overrides)
    from bridgerl.utils.rundir import run_dir_for
    from bridgerl.trainers.loop import train as run

    summary = run(cfg)
    return TrainResult(summary, run_dir_for(cfg).resolve(), cfg)


def evaluate(model: TrainResult | str | Path = "embedded", config: Config | Mapping[str, Any] | str | Path | None = None,
             /, *, split: str = "test", k: int = 1, limit: int | None = None, max_new_tokens: int | None = None,
             temperature: float = 1.0, **overrides: Any) -> Any:
    """Greedy pass@1 (and avg@k / pass@k for k > 1) of a model on a split of the config's task,
    graded by the task's grader or its reward functions, as `bridgerl eval`. Returns an
    eval.evaluate.EvalResult (accuracy, metrics, per-example records).

    model: a TrainResult (its final model and its config), a run folder, a model folder or "embedded".
    """
    from bridgerl.config import ModelConfig
    from bridgerl.eval.evaluate import evaluate as run_eval
    from bridgerl.models.loading import load
    from bridgerl.rollout.hf import HFEngine
    from bridgerl.tasks import SPLITS, TaskError, build_task

    if isinstance(model, TrainResult):
        config = model.config if config is None else config
        model = model.run_dir
    if (Path(model) / "final" / "config.json").is_file():  # a run folder: its deployed model
        model = Path(model) / "final"
    cfg = make_config(config, **overrides)
    if split not in SPLITS:
        raise ConfigError(f"split {split!r} is not a split; choose one of: {', '.join(SPLITS)}")
    task = build_task(cfg.task)
    examples = task.split(split)[:limit] if limit else task.split(split)
    if not examples:
        raise TaskError(f"the {split} split of task {task.name!r} is empty; evaluate another split or give it data")
    net, tokenizer = load(ModelConfig(name_or_path=str(model), dtype=cfg.model.dtype))
    task.check_tokenizer(tokenizer)
    return run_eval(HFEngine(net, tokenizer), tokenizer, task, examples, k=k, temperature=temperature,
                    max_new_tokens=max_new_tokens or cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens,
                    batch_size=cfg.eval.batch_size)


def compare(config: Mapping[str, Any] | str | Path | None = None, /, *, recipes: list[str] | None = None,
            seeds: int = 5, steps: int | None = None, minutes: float | None = None, name: str = "default",
            jobs: int = 1, reward_noise: float | None = None, lam_sweep: list[float] | None = None,
            lr_sweep: list[float] | None = None, lr_extend: bool = False, meta_ablation: bool = False,
            **overrides: Any) -> CompareResult:
    """Several recipes x seeds on one budget, as `bridgerl compare` (the same keywords as its options).

    Each run starts from text (a YAML path and key=value overrides; with jobs > 1 in child processes),
    so reward functions are named ('path/to/file.py:function') and data are files here.
    """
    from bridgerl.report.compare import run_compare

    path = str(config) if isinstance(config, (str, Path)) else None
    values = {**(config if isinstance(config, Mapping) else {}), **overrides}
    args = [*([path] if path else []), *_as_overrides(values)]
    cfg = load_config(path, args[1:] if path else args)
    ns = argparse.Namespace(recipes=recipes, seeds=seeds, steps=steps, minutes=minutes, name=name, jobs=jobs,
                            reward_noise=reward_noise, lam_sweep=lam_sweep, lr_sweep=lr_sweep, lr_extend=lr_extend,
                            meta_ablation=meta_ablation, args=args)
    code = run_compare(ns)
    compare_dir = (Path(cfg.run.output_dir) / f"compare-{name}").resolve()
    if code != 0:
        raise RuntimeError(f"compare: some runs failed (exit code {code}); their logs are in {compare_dir}")
    return CompareResult(json.loads((compare_dir / "results.json").read_text()), compare_dir)


def _as_overrides(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """{"train": {"steps": 2}} -> ["train.steps=2"]; a value YAML cannot write (a function, a Dataset) is refused."""
    out = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            out += _as_overrides(value, f"{prefix}{key}.")
            continue
        try:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()
        except yaml.representer.RepresenterError:
            raise ConfigError(f"compare: {prefix}{key} holds a {type(value).__name__}; compare starts every run from "
                              "text, so name reward functions as 'path/to/file.py:function' and give data as files") from None
        out.append(f"{prefix}{key}={text.removesuffix('...').strip()}")
    return out
