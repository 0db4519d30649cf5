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

Columns are found by name, in any case (`Question` as `question`), or named with
`task.math.*_field`. A problem split over columns (SVAMP's `Body` + `Question`, ASDiv's `body` +
`question`) is read with `task.math.question_template: "{Body} {Question}"` (str.format names,
values stripped); with a filled body-like column (BODY_FIELDS) and no template the file is refused,
since its question alone lacks the facts. Gold unit notes are dropped ("9 (apples)" -> "9",
`grading.strip_units`). Refused at load, one line naming the file (and line or row index): an
empty file, a missing column (with the columns present), and a gold answer no completion could
ever match (`grading.gold_problem`: unbalanced braces such as `\\frac{`, or nothing but markup).

Paths: an existing local file (`.jsonl`, `.json` (JSON lines or one array), `.parquet`), else a
hub dataset id `owner/name[:config][@split]` loaded with `datasets.load_dataset`. The train path
uses `hub_split` unless it names its split; test and hard paths default to the split "test".
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridgerl.config import MathTaskConfig
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, VAL, Example, Task, TaskError
from bridgerl.tasks.grading import extract_boxed, gold_problem, grade_math, strip_units
from bridgerl.tasks.rows import read_rows

PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."

QUESTION_FIELDS = ("problem", "question", "prompt", "query", "input", "instruction")
ANSWER_FIELDS = ("answer", "final_answer", "expected_answer", "ground_truth", "gold", "target")
SOLUTION_FIELDS = ("solution", "solutions", "reasoning", "rationale", "cot")
# The facts of a problem kept apart from its question (ASDiv `body`, SVAMP `Body`, OlympiadBench's
# physics `context`): with one of these filled, the question column alone is refused (see load_source).
BODY_FIELDS = ("body", "context", "passage", "story")

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


def default_data_root() -> Path:
    """`$BRIDGERL_DATA`, else `../shared/data` relative to the current directory."""
    return Path(os.environ.get("BRIDGERL_DATA") or Path("..") / "shared" / "data")


def clean_answer(value: Any) -> str:
    """A gold answer as a string: lists joined, 27.0 -> "27", `$` delimiters, unit notes, 1,000-commas gone."""
    if isinstance(value, (list, tuple)):
        return ", ".join(s for s in (clean_answer(v) for v in value) if s)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = re.sub(r"(?<!\\)\$", "", "" if value is None else str(value)).strip()
    text = strip_units(text)  # "9 (apples)" -> "9": the grader would strip it too; the SFT target should not box it
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


# ------------------------------------------------------------------------------- mapping columns


@dataclass
class Source:
    """Where one split's examples came from and how the file's columns were mapped (for messages)."""

    path: str
    unit: str  # "line" or "row index"
    columns: tuple[str, ...]
    question: str  # the question column, or the template over columns
    answer: str | None
    solution: str | None  # the column solutions came from (GSM8K: the answer column's steps)
    rows: int
    no_solution: tuple[int, ...] = ()  # row numbers without a solution

    def describe(self) -> str:
        """One clause naming the file and its columns, and any rows without a solution."""
        if self.solution is None:
            looked = ", ".join(SOLUTION_FIELDS)
            return (f"{self.path} has no solution column (looked for {looked}; columns: {', '.join(self.columns)});"
                    " set task.math.solution_field")
        if self.no_solution:
            return (f"{self.path}: {len(self.no_solution)} of {self.rows} rows have no solution in column"
                    f" {self.solution!r} (first: {self.unit} {self.no_solution[0]}); fill them or drop those rows")
        return f"{self.path} (question {self.question}, answer column {self.answer!r}, solution column {self.solution!r})"


def _pick(explicit: str | None, candidates: tuple[str, ...], keys: set[str], *, src: str, key: str,
          required: bool = True) -> str | None:
    """The explicit column (which must exist when required), else the first candidate present, any case."""
    if explicit is not None:
        if explicit not in keys and required:
            raise TaskError(f"{src}: no column {explicit!r} (task.math.{key}); columns: {', '.join(sorted(keys))}")
        return explicit if explicit in keys else None
    by_lower: dict[str, str] = {}
    for k in sorted(keys, key=lambda k: (k.lower(), k != k.lower())):  # "question" before "Question"
        by_lower.setdefault(k.lower(), k)
    return next((by_lower[c] for c in candidates if c in by_lower), None)


def template_fields(template: str) -> tuple[str, ...]:
    """The column names in a question template ("{Body} {Question}"); TaskError for a malformed one."""
    fix = "name columns in braces, e.g. '{Body} {Question}', and write a literal brace as {{ or }}"
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TaskError(f"task.math.question_template={template!r} is not a template ({exc}); {fix}") from None
    names = tuple(dict.fromkeys(name for _, name, _, _ in parts if name is not None))
    for _, name, spec, conv in parts:
        if name is not None and (not name or name.isdigit() or "." in name or "[" in name or spec or conv):
            raise TaskError(f"task.math.question_template={template!r}: {{{name or ''}}} is not a column name; {fix}")
    if not names:
        raise TaskError(f"task.math.question_template={template!r} names no column; {fix}")
    return names


def _render(template: str, row: dict, where: str) -> str:
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            value = row.get(name)
            if isinstance(value, (list, dict)):
                raise TaskError(f"{where}: column {name!r} holds a {type(value).__name__}; "
                                "task.math.question_template takes text or numbers")
            out.append("" if value is None else str(value).strip())
    text = "".join(out).strip()
    if not text:
        raise TaskError(f"{where}: task.math.question_template={template!r} gives an empty question; fill or drop the row")
    return text


def load_examples(path: str, cfg: MathTaskConfig, *, split: str) -> list[Example]:
    """Read `path` and map every row to an Example; one TaskError line for the first bad row."""
    return load_source(path, cfg, split=split)[0]


def load_source(path: str, cfg: MathTaskConfig, *, split: str,
                key: str = "task.math.test_path") -> tuple[list[Example], Source]:
    """The examples of `path` (named by the config `key`) and how they were read; one TaskError line
    for the first problem: no rows, a missing column, a bad row, a gold no answer can match."""
    label, unit, rows = read_rows(path, split=split, limit=cfg.limit)
    if not rows:
        why = "task.math.limit=0 keeps none of its rows" if cfg.limit == 0 else "it has no rows"
        raise TaskError(f"{path}: no problems to read ({why}); point {key} at a file with one problem per row")
    keys: set[str] = set().union(*(row.keys() for _, row in rows))
    fields = ", ".join(sorted(keys))
    is_train = key.endswith("train_path")  # its solutions feed SFT: a named solution column must exist
    if cfg.question_template is not None and cfg.question_field is not None:
        raise TaskError("task.math.question_template and task.math.question_field are both set; keep one")
    if cfg.question_template is not None:
        names = template_fields(cfg.question_template)
        missing = [n for n in names if n not in keys]
        if missing:
            raise TaskError(f"{path}: no column {missing[0]!r} (named in task.math.question_template="
                            f"{cfg.question_template!r}); columns: {fields}")
        q_field, q_used = None, set(names)
    else:
        q_field = _pick(cfg.question_field, QUESTION_FIELDS, keys, src=path, key="question_field")
        if q_field is None:
            looked = ", ".join(QUESTION_FIELDS)
            raise TaskError(f"{path}: no question column (looked for {looked}; columns: {fields}); "
                            "set task.math.question_field or task.math.question_template")
        q_used = {q_field}
        body = _pick(None, BODY_FIELDS, keys, src=path, key="")
        if cfg.question_field is None and body and any(isinstance(r.get(body), str) and r[body].strip() for _, r in rows):
            raise TaskError(f"{path}: the problem is split over columns {body!r} and {q_field!r}, and {q_field!r} alone "
                            f"may lack its facts; set task.math.question_template=\"{{{body}}} {{{q_field}}}\" "
                            f"(or task.math.question_field={q_field} to ask the question alone)")
    a_field = _pick(cfg.answer_field, ANSWER_FIELDS, keys, src=path, key="answer_field")
    s_field = _pick(cfg.solution_field, SOLUTION_FIELDS, keys, src=path, key="solution_field", required=is_train)
    if a_field is None and s_field is None:
        looked = f"{', '.join(ANSWER_FIELDS)} or a boxed {', '.join(SOLUTION_FIELDS)}"
        raise TaskError(f"{path}: no answer column (looked for {looked}; columns: {fields}); set task.math.answer_field")
    used = q_used | {a_field, s_field} | {k for k in keys if k.lower() in QUESTION_FIELDS + ANSWER_FIELDS + SOLUTION_FIELDS}
    examples = []
    for number, row in rows:
        where = f"{path} {unit} {number}"
        question = _render(cfg.question_template, row, where) if q_field is None else _question(row, q_field, where)
        example = _to_example(row, where, f"{label}#{number}", question, a_field, s_field, used)
        why = gold_problem(example.answer)
        if why is not None:
            column = a_field or s_field
            raise TaskError(f"{where}: gold answer {example.answer!r} (column {column!r}) can never be graded right: "
                            f"{why}; fix or drop the row")
        examples.append(example)
    lacking = tuple(n for (n, _), e in zip(rows, examples) if e.solution is None)
    solution_from = s_field or (a_field if len(lacking) < len(examples) else None)
    question = f"template {cfg.question_template!r}" if q_field is None else f"column {q_field!r}"
    source = Source(path, unit, tuple(sorted(keys)), question, a_field, solution_from, len(rows),
                    lacking if solution_from else ())
    return examples, source


def _question(row: dict, q_field: str, where: str) -> str:
    question = row.get(q_field)
    if not isinstance(question, str) or not question.strip():
        raise TaskError(f"{where}: no question in field {q_field!r}; fill it, drop the row, or set task.math.question_field")
    return question.strip()


def _to_example(row: dict, where: str, ex_id: str, question: str, a_field: str | None, s_field: str | None,
                used: set) -> Example:
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
    meta = {k: v for k, v in row.items() if k not in used and isinstance(v, (str, int, float, bool))}
    return Example(id=ex_id, question=question, answer=answer, solution=solution, meta=meta)


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
        self.sources: dict[str, Source] = {}  # split -> where it came from (for error messages)
        if cfg.train_path:
            train, source = load_source(cfg.train_path, cfg, split=cfg.hub_split, key="task.math.train_path")
            self.splits[RL_TRAIN] = train
            self.splits[SFT_TRAIN] = [e for e in train if e.solution is not None]
            self.sources[RL_TRAIN] = self.sources[SFT_TRAIN] = source
        for split, path, key in ((TEST, cfg.test_path, "test_path"), (TEST_HARD, cfg.hard_path, "hard_path"),
                                 (VAL, cfg.val_path, "val_path")):
            if path:
                self.splits[split], self.sources[split] = load_source(path, cfg, split="test", key=f"task.math.{key}")

    def data_hint(self, split: str) -> str:
        if split in self.sources:
            return self.sources[split].describe()
        key = {RL_TRAIN: "train_path", SFT_TRAIN: "train_path", TEST: "test_path", TEST_HARD: "hard_path"}.get(split, "val_path")
        return f"no task.math.{key} is set"

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
