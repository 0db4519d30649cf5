"""Math word problems and competition math from local JSONL / Parquet files or hub datasets.

Every source is mapped to one schema, `Example(question, answer, solution)`:

| source        | question          | answer (gold)                             | solution (SFT target)          |
|---------------|-------------------|-------------------------------------------|--------------------------------|
| gsm8k         | question          | after the `####` of `answer`, no commas   | `answer` without `<<..>>` notes, final line `The final answer is \\boxed{N}.` |
| math500       | problem           | answer                                    | solution                       |
| aime24, amc23 | problem           | answer (amc's 27.0 -> "27")               | solution where present         |
| minerva_math  | problem           | the last `\\boxed{}` of solution          | solution                       |
| olympiadbench | question          | final_answer: a list, joined with ", "    | the first of the solution list |

Decisions: OlympiadBench's `final_answer` is a one-element list in every row of the English
text-only set (multiple answers sit inside that one string, "$69$,$84$"), so the list is joined
with ", " (never loses an element); unescaped `$` are stripped from every gold answer and a lone
number's thousands separators are removed ("1,080" -> "1080"). Its `solution` is a list of
alternative official solutions: the first is the SFT target. A solution without a box gets
"The final answer is \\boxed{gold}." appended, so every SFT target ends in the prompt's format.

Paths: an existing local file (`.jsonl`, `.json` (JSON lines or one array), `.parquet`), else a
hub dataset id `owner/name[:config][@split]` loaded with `datasets.load_dataset`. The train path
uses `hub_split` unless it names its split; test and hard paths default to the split "test".
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from bridgerl.config import MathTaskConfig
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, VAL, Example, Task, TaskError
from bridgerl.tasks.grading import extract_boxed, grade_math

PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."

QUESTION_FIELDS = ("problem", "question", "prompt", "query", "input", "instruction")
ANSWER_FIELDS = ("answer", "final_answer", "expected_answer", "ground_truth", "gold", "target")
SOLUTION_FIELDS = ("solution", "solutions", "reasoning", "rationale", "cot")

# Benchmark files under a data root (the layout of /work/shared/data; see its README).
BENCHMARKS = {
    "math500": "math500/test.jsonl",
    "minerva_math": "minerva_math/test.jsonl",
    "olympiadbench": "olympiadbench/test.jsonl",
    "aime24": "aime24/test.jsonl",
    "amc23": "amc23/test.jsonl",
    "gsm8k": "gsm8k/test.jsonl",
}
GSM8K_TRAIN = "gsm8k/train.jsonl"
GSM8K_TEST = "gsm8k/test.jsonl"

_CALC_NOTE_RE = re.compile(r"<<[^<>]*>>")
_LONE_THOUSANDS_RE = re.compile(r"^-?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?(?::[\w.-]+)?(?:@[\w.:%+\[\]-]+)?$")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def default_data_root() -> Path:
    """`$BRIDGERL_DATA`, else `../shared/data` relative to the current directory."""
    return Path(os.environ.get("BRIDGERL_DATA") or Path("..") / "shared" / "data")


def clean_answer(value: Any) -> str:
    """A gold answer as a string: lists joined, 27.0 -> "27", `$` delimiters and 1,000-commas gone."""
    if isinstance(value, (list, tuple)):
        return ", ".join(s for s in (clean_answer(v) for v in value) if s)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = re.sub(r"(?<!\\)\$", "", "" if value is None else str(value)).strip()
    return text.replace(",", "") if _LONE_THOUSANDS_RE.match(text) else text


def strip_calc_notes(text: str) -> str:
    """GSM8K's calculator annotations `<<48/2=24>>` removed (a model should not learn to emit them)."""
    return _CALC_NOTE_RE.sub("", text)


def gsm8k_solution(text: str) -> tuple[str, str]:
    """(solution, answer) from a GSM8K-style answer: steps with `<<calc>>` notes, then `#### N`."""
    body, sep, tail = text.rpartition("####")
    if not sep:
        raise ValueError("no '####' line")
    answer = clean_answer(tail.strip())
    body = strip_calc_notes(body).rstrip()
    final = f"The final answer is \\boxed{{{answer}}}."
    return (f"{body}\n{final}" if body else final), answer


def with_final_answer(solution: str, answer: str) -> str:
    """The solution, ending with a boxed final answer (appended when it has no box)."""
    if extract_boxed(solution) is not None:
        return solution
    return f"{solution.rstrip()}\n\nThe final answer is \\boxed{{{answer}}}."


# ---------------------------------------------------------------------------------- reading rows


def read_rows(path: str, *, split: str, limit: int | None = None) -> tuple[str, str, list[tuple[int, dict]]]:
    """(label, unit, rows) from a local file or hub id; unit is "line" (JSONL) or "row index"."""
    local = Path(path).expanduser()
    if local.is_file():
        suffix = local.suffix.lower()
        label = f"{local.parent.name}/{local.stem}" if local.parent.name else local.stem
        if suffix in (".jsonl", ".json"):
            return label, "line", _read_json(local, limit)
        if suffix == ".parquet":
            return label, "row index", _read_parquet(local, limit)
        raise TaskError(f"math data file {str(local)!r} has an unsupported type {suffix!r}; use .jsonl, .json or .parquet")
    if local.is_dir():
        raise TaskError(f"math data path {str(local)!r} is a directory; point at a .jsonl/.json/.parquet file in it")
    if local.suffix.lower() in _LOCAL_SUFFIXES or path.startswith(("/", ".", "~")) or not _HUB_ID_RE.match(path):
        raise TaskError(
            f"math data file {path!r} not found; pass an existing .jsonl/.json/.parquet file"
            " or a hub id owner/name[:config][@split]"
        )
    return path, "row index", _read_hub(path, split, limit)


def _read_json(path: Path, limit: int | None) -> list[tuple[int, dict]]:
    rows: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
        fh.seek(0)
        if path.suffix.lower() == ".json" and head.startswith("["):  # one JSON array
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
            items = list(enumerate(data))[:limit] if limit is not None else list(enumerate(data))
            for i, row in items:
                if not isinstance(row, dict):
                    kind = type(row).__name__
                    raise TaskError(f"{path} row index {i}: expected a JSON object, got {kind}; make each item an object")
                rows.append((i, row))
            return rows
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path} line {lineno}: not valid JSON ({exc.msg}); fix or delete that line") from None
            if not isinstance(row, dict):
                kind = type(row).__name__
                raise TaskError(f"{path} line {lineno}: expected a JSON object, got {kind}; write one object per line")
            rows.append((lineno, row))
    return rows


def _read_parquet(path: Path, limit: int | None) -> list[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"reading {path} needs pyarrow; pip install pyarrow (or convert the file to JSONL)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise TaskError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); check the file") from None
    if limit is not None:
        table = table.slice(0, limit)
    return list(enumerate(table.to_pylist()))


def _read_hub(spec: str, default_split: str, limit: int | None) -> list[tuple[int, dict]]:
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise TaskError(f"loading hub dataset {spec!r} needs `datasets`; pip install datasets, or pass a local file") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split or default_split)
    except Exception as exc:  # network, missing split or config, ...: all mean "cannot load this id"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TaskError(
            f"could not load hub dataset {name!r} (config {config or None!r}, split {split or default_split!r}): "
            f"{type(exc).__name__}: {first}; check the id, or download it and pass a local JSONL/Parquet file"
        ) from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [(i, dict(row)) for i, row in enumerate(ds)]


# ------------------------------------------------------------------------------- mapping columns


def _pick(explicit: str | None, candidates: tuple[str, ...], keys: set[str]) -> str | None:
    if explicit is not None:
        return explicit
    return next((c for c in candidates if c in keys), None)


def load_examples(path: str, cfg: MathTaskConfig, *, split: str) -> list[Example]:
    """Read `path` and map every row to an Example; one TaskError line for the first bad row."""
    label, unit, rows = read_rows(path, split=split, limit=cfg.limit)
    keys: set[str] = set().union(*(row.keys() for _, row in rows)) if rows else set()
    q_field = _pick(cfg.question_field, QUESTION_FIELDS, keys)
    a_field = _pick(cfg.answer_field, ANSWER_FIELDS, keys)
    s_field = _pick(cfg.solution_field, SOLUTION_FIELDS, keys)
    fields = ", ".join(sorted(keys)) or "none"
    if rows and q_field is None:
        looked = ", ".join(QUESTION_FIELDS)
        raise TaskError(f"{path}: no question column (looked for {looked}; columns: {fields}); set task.math.question_field")
    if rows and a_field is None and s_field is None:
        looked = f"{', '.join(ANSWER_FIELDS)} or a boxed {', '.join(SOLUTION_FIELDS)}"
        raise TaskError(f"{path}: no answer column (looked for {looked}; columns: {fields}); set task.math.answer_field")
    examples = []
    for number, row in rows:
        where = f"{path} {unit} {number}"
        examples.append(_to_example(row, where, f"{label}#{number}", q_field, a_field, s_field))
    return examples


def _to_example(row: dict, where: str, ex_id: str, q_field: str, a_field: str | None, s_field: str | None) -> Example:
    question = row.get(q_field)
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f"{where}: no question in field {q_field!r}; fill it, drop the row, or set task.math.question_field")
    raw_solution = row.get(s_field) if s_field else None
    if isinstance(raw_solution, (list, tuple)):  # OlympiadBench: alternative solutions, take the first
        raw_solution = next((s for s in raw_solution if isinstance(s, str) and s.strip()), None)
    solution = raw_solution if isinstance(raw_solution, str) and raw_solution.strip() else None

    if a_field is not None:
        raw_answer = row.get(a_field)
        if isinstance(raw_answer, str) and "####" in raw_answer:  # GSM8K: steps, then "#### N"
            gsm_solution, answer = gsm8k_solution(raw_answer)
            solution = solution or gsm_solution
        else:
            answer = clean_answer(raw_answer)
        if not answer:
            raise TaskError(f"{where}: no answer in field {a_field!r}; fill it, drop the row, or set task.math.answer_field")
    else:  # no answer column (Minerva): the answer is the boxed part of the solution
        boxed = extract_boxed(solution) if solution else None
        answer = clean_answer(boxed) if boxed else ""
        if not answer:
            raise TaskError(
                f"{where}: no \\boxed{{}} answer in field {s_field!r} and no answer column;"
                " add one or set task.math.answer_field"
            )
    if solution is not None:
        solution = with_final_answer(solution, answer)
    used = {q_field, a_field, s_field, *QUESTION_FIELDS, *ANSWER_FIELDS, *SOLUTION_FIELDS}
    meta = {k: v for k, v in row.items() if k not in used and isinstance(v, (str, int, float, bool))}
    return Example(id=ex_id, question=question.strip(), answer=answer, solution=solution, meta=meta)


# ------------------------------------------------------------------------------------ the task


class MathTask(Task):
    """Math problems graded by math-verify, with the paper's prompt (question + boxed suffix)."""

    name = "math"
    use_chat_template = True

    def __init__(self, cfg: MathTaskConfig, *, name: str = "math") -> None:
        super().__init__()
        self.name = name
        self.cfg = cfg
        if not (cfg.train_path or cfg.test_path or cfg.hard_path):
            raise TaskError(f"task {name!r} has no data; set task.math.train_path and/or task.math.test_path")
        if cfg.train_path:
            train = load_examples(cfg.train_path, cfg, split=cfg.hub_split)
            self.splits[RL_TRAIN] = train
            self.splits[SFT_TRAIN] = [e for e in train if e.solution is not None]
        if cfg.test_path:
            self.splits[TEST] = load_examples(cfg.test_path, cfg, split="test")
        if cfg.hard_path:
            self.splits[TEST_HARD] = load_examples(cfg.hard_path, cfg, split="test")
        if cfg.val_path:
            self.splits[VAL] = load_examples(cfg.val_path, cfg, split="test")

    def prompt(self, example: Example) -> str:
        return f"{example.question}\n{PROMPT_SUFFIX}"

    def grade(self, example: Example, completion: str) -> float:
        return grade_math(example.answer, completion, self.cfg.grade_timeout_s)


def benchmark_task(name: str, data_root: str | Path | None = None, limit: int | None = None) -> MathTask:
    """A MathTask whose `test` split is one benchmark of BENCHMARKS, read under `data_root`."""
    if name not in BENCHMARKS:
        raise TaskError(f"unknown benchmark {name!r}; choose one of: {', '.join(BENCHMARKS)}")
    root = Path(data_root) if data_root is not None else default_data_root()
    path = root / BENCHMARKS[name]
    if not path.is_file():
        raise TaskError(
            f"benchmark file {str(path)!r} not found; pass the data root holding {BENCHMARKS[name]} (or set BRIDGERL_DATA)"
        )
    return MathTask(MathTaskConfig(test_path=str(path), limit=limit), name=name)
