"""Evaluation with the task's own grader (the same function that gives the training reward).

Greedy pass@1 always; with k > 1 also k samples per problem at `temperature`, giving avg@k and
the unbiased pass@k (eval.metrics).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bridgerl.eval.metrics import summarize
from bridgerl.rollout.base import SamplingParams
from bridgerl.tasks.base import Example, Task, render_prompt


@dataclass
class EvalResult:
    accuracy: float  # greedy pass@1
    metrics: dict[str, float]  # accuracy, mean_length, and avg@k / pass@k when sampled
    records: list[dict[str, Any]] = field(default_factory=list)  # per example: prompt, completions, grades


def evaluate(engine: Any, tokenizer: Any, task: Task, examples: list[Example], *, max_new_tokens: int,
             batch_size: int = 128, k: int = 1, temperature: float = 1.0, top_p: float = 1.0,
             progress: Any = None, keep: int | None = None) -> EvalResult:
    """Greedy pass@1 (and avg@k / pass@k for k > 1) of the engine's policy on `examples`.

    keep: only the first `keep` examples count; the rest only pad a sharded run's last batch
    (every rank must generate the same batches), and their results are dropped.
    """
    if not examples:
        return EvalResult(0.0, {"accuracy": 0.0})
    greedy = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)
    sample = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=k)
    records, grades, samples, lengths = [], [], [], []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        prompts = [render_prompt(task, e, tokenizer) for e in chunk]
        out = engine.generate(prompts, greedy)
        g = task.grade_batch(chunk, out.texts)
        grades += g
        lengths += out.completion_mask.sum(1).tolist()
        sampled: list[list[float]] = [[] for _ in chunk]
        sampled_texts: list[list[str]] = [[] for _ in chunk]
        if k > 1:
            s = engine.generate(prompts, sample)
            rows = [e for e in chunk for _ in range(k)]
            sg = task.grade_batch(rows, s.texts)
            for i in range(len(chunk)):
                sampled[i] = sg[i * k:(i + 1) * k]
                sampled_texts[i] = s.texts[i * k:(i + 1) * k]
            samples += sampled
        for i, e in enumerate(chunk):
            rec = {"id": e.id, "prompt": prompts[i], "answer": e.answer, "completion": out.texts[i], "grade": g[i]}
            if k > 1:
                rec["samples"], rec["sample_grades"] = sampled_texts[i], sampled[i]
            records.append(rec)
        if progress is not None:
            progress(len(chunk))
    if keep is not None:
        records, grades, samples, lengths = records[:keep], grades[:keep], samples[:keep], lengths[:keep]
    accuracy = sum(grades) / max(len(grades), 1)
    metrics = {"accuracy": accuracy, "mean_length": sum(lengths) / max(len(lengths), 1)}
    if k > 1:
        ks = sorted({1, k} | {x for x in (2, 4, 8, 16, 32) if x < k})
        summary = summarize(samples, ks=ks)
        metrics.update({("sampled_pass@1" if key == "pass@1" else key): v for key, v in summary.items()})
    return EvalResult(accuracy, metrics, records)


def write_records(path: str | Path, records: list[dict[str, Any]]) -> None:
    with Path(path).open("w") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
