"""`bridgerl eval`: a model directory on a task split or on the math benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bridgerl.config import ConfigError, ModelConfig
from bridgerl.config_load import load_config
from bridgerl.utils.logging import quiet_transformers


def run_eval(ns: argparse.Namespace) -> int:
    from bridgerl.eval.evaluate import evaluate, write_records
    from bridgerl.models.loading import load
    from bridgerl.rollout.hf import HFEngine
    from bridgerl.tasks import build_task
    from bridgerl.tasks.base import SPLITS

    check_args(ns)
    path = next((a for a in ns.args if a.endswith((".yaml", ".yml")) and "=" not in a), None)
    cfg = load_config(path, [a for a in ns.args if a != path])
    if ns.split not in SPLITS:
        raise ConfigError(f"--split {ns.split!r} is not a split; choose one of: {', '.join(SPLITS)}")
    model_cfg = ModelConfig(name_or_path=ns.model, dtype=cfg.model.dtype)
    if ns.benchmark is not None:
        from bridgerl.tasks.math import BENCHMARKS, benchmark_task

        names = list(BENCHMARKS) if ns.benchmark in ([], ["all"]) else ns.benchmark
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            raise ConfigError(f"unknown benchmark {unknown[0]!r}; choose from: {', '.join(BENCHMARKS)} or 'all'")
        jobs = [(n, benchmark_task(n, ns.data_root, limit=ns.limit), "test") for n in names]  # None: $BRIDGERL_DATA
        default_tokens = 1024
    else:
        jobs = [(cfg.task.name, build_task(cfg.task), ns.split)]
        default_tokens = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    quiet_transformers()
    model, tokenizer = load(model_cfg)
    engine = HFEngine(model, tokenizer)
    results = {}
    for name, task, split in jobs:
        examples = task.split(split)[: ns.limit] if ns.limit else task.split(split)
        res = evaluate(engine, tokenizer, task, examples, max_new_tokens=ns.max_new_tokens or default_tokens,
                       batch_size=ns.batch_size or cfg.eval.batch_size, k=ns.k, temperature=ns.temperature)
        results[name] = {"split": split, "n": len(examples), "greedy_pass@1": res.accuracy, **res.metrics}
        if ns.out:
            out = Path(ns.out)
            target = out / f"{name}_{split}.jsonl" if len(jobs) > 1 or out.suffix != ".jsonl" else out
            target.parent.mkdir(parents=True, exist_ok=True)
            write_records(target, res.records)
        print(result_line(name, split, len(examples), res.metrics, ns.k, ns.temperature))
    print(json.dumps(results, indent=2))
    return 0


def check_args(ns: argparse.Namespace) -> None:
    """Option values that cannot work, refused before anything loads."""
    checks = [
        (ns.k >= 1, f"--k {ns.k}: must be >= 1 (1 = greedy pass@1 only; k > 1 adds k samples per problem for "
                    "avg@k and pass@k)"),
        (ns.k == 1 or ns.temperature > 0, f"--temperature {ns.temperature}: sampling (--k > 1) needs a temperature > 0"),
        (ns.limit is None or ns.limit >= 1, f"--limit {ns.limit}: must be >= 1 (leave it out for every problem)"),
        (ns.batch_size is None or ns.batch_size >= 1, f"--batch-size {ns.batch_size}: must be >= 1"),
        (ns.max_new_tokens is None or ns.max_new_tokens >= 1, f"--max-new-tokens {ns.max_new_tokens}: must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def result_line(name: str, split: str, n: int, metrics: dict[str, float], k: int, temperature: float) -> str:
    """Greedy and sampled figures apart: greedy pass@1 can exceed a sampled pass@2 (different decoding)."""
    line = f"{name} [{split}, n={n}]  greedy pass@1 = {metrics['accuracy']:.4f}"
    if k > 1:
        sampled = "  ".join(f"{key} = {v:.4f}" for key, v in metrics.items() if key.startswith(("avg@", "pass@")))
        line += f"  |  sampled (k={k}, temperature={temperature:g}): {sampled}"
    return line
