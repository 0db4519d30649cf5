"""Your own data as a task (task.name=user), graded by your reward functions (task.reward_funcs).

Sources (task.user.train / sft / val / test / test_hard): a .jsonl, .json, .parquet or .csv file, a
hub id `owner/name[:config][@split]`, or from Python a `datasets.Dataset`, a pandas DataFrame or a
list of dicts. Rows follow TRL's dataset formats:

    {"prompt": "Q:3+4=\\nA:", "answer": "7", "solution": "3+4=7;#7"}                # standard
    {"prompt": [{"role": "user", "content": "What is 3+4?"}], "answer": "7"}       # conversational

- prompt: a string, fed to the model as it is (TRL's standard format: no chat template), or a list
  of chat messages, rendered with the tokenizer's chat template and its generation prompt.
  Column: task.user.prompt_column, else the one of PROMPT_COLUMNS present.
- solution (optional): the expert completion, the SFT target; a string or an assistant message.
  Column: task.user.solution_column ("" = none), else the one of SOLUTION_COLUMNS present.
- every column but the prompt (the solution included) reaches the reward functions by name.
Auto-detection takes a column only when exactly one candidate is present; otherwise it asks.

Splits: rl_train = the train rows not held out; sft_train = the sft source's rows, else the
rl_train rows that have a solution; val / test = their sources, else val_fraction / test_fraction
of train's distinct prompts held out by a shuffle seeded with split_seed (a held-out prompt leaves
rl_train and sft_train entirely, duplicates included); test_hard = its source, else empty.
A source with no rows, or a split left empty by holding out, is refused.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path
from typing import Any

from bridgerl.config import UserTaskConfig
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, VAL, Example, Task, TaskError

PROMPT_COLUMNS = ("prompt", "messages", "question", "problem", "query")
SOLUTION_COLUMNS = ("solution", "completion", "response")
ANSWER_COLUMNS = ("answer", "ground_truth", "final_answer", "target")  # shown as `answer` in completions JSONL
_FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# hub split read for a hub id without @split, per source
_HUB_SPLITS = {"val": "validation", "test": "test", "test_hard": "test"}


def read_source(source: Any, what: str, *, hub_split: str = "train", limit: int | None = None
                ) -> tuple[str, list[tuple[str, dict]]]:
    """(label, [(row id, row)]) of one source; `what` names it in messages (train, test, ...)."""
    if isinstance(source, (str, Path)):
        label, rows = _read_path(str(source), what, hub_split, limit)
    elif isinstance(source, (list, tuple)):
        label, rows = f"task.user.{what}", [(f"{what}[{i}]", r) for i, r in enumerate(source[:limit])]
    elif hasattr(source, "column_names") and hasattr(source, "to_list"):  # datasets.Dataset
        data = source.select(range(min(limit, len(source)))) if limit is not None else source
        label, rows = f"task.user.{what}", [(f"{what}[{i}]", r) for i, r in enumerate(data.to_list())]
    elif hasattr(source, "to_dict") and hasattr(source, "columns"):  # pandas.DataFrame
        records = source.to_dict("records")[:limit]
        label, rows = f"task.user.{what}", [(f"{what}[{i}]", r) for i, r in enumerate(records)]
    else:
        raise TaskError(f"task.user.{what}: a {type(source).__name__} is not a data source; give a .jsonl/.parquet/.csv "
                        "file, a hub id, a datasets.Dataset or a list of dicts")
    for rid, row in rows:
        if not isinstance(row, dict):
            raise TaskError(f"task.user.{what} {rid}: a {type(row).__name__}, not a mapping of columns; make every row a dict")
    if not rows:
        raise TaskError(f"task.user.{what} ({label}) has no rows; give a source with at least one row")
    return label, rows


def _read_path(path: str, what: str, hub_split: str, limit: int | None) -> tuple[str, list[tuple[str, dict]]]:
    from bridgerl.tasks.math import read_rows  # JSONL / JSON / Parquet / hub, shared with the math task

    local = Path(path).expanduser()
    if local.is_file():
        if local.suffix.lower() == ".csv":
            return local.name, _read_csv(local, limit)
        if local.suffix.lower() not in _FILE_SUFFIXES:
            raise TaskError(f"task.user.{what}: {path!r} is a {local.suffix or 'suffix-less'} file; "
                            "use .jsonl, .json, .parquet or .csv")
        _, unit, rows = read_rows(str(local), split=hub_split, limit=limit)
        return local.name, [(f"{local.name} {unit} {n}", row) for n, row in rows]
    if local.suffix.lower() in _FILE_SUFFIXES or path.startswith(("/", ".", "~")) or local.is_dir():
        raise TaskError(f"task.user.{what}: file {path!r} not found; pass an existing .jsonl/.json/.parquet/.csv "
                        "file or a hub id owner/name[:config][@split]")
    _, _, rows = read_rows(path, split=hub_split, limit=limit)
    return path, [(f"{path} row {n}", row) for n, row in rows]


def _read_csv(path: Path, limit: int | None) -> list[tuple[str, dict]]:
    rows = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            if limit is not None and len(rows) >= limit:
                break
            rows.append((f"{path.name} line {reader.line_num}", dict(row)))
    return rows


def _column(explicit: str | None, candidates: tuple[str, ...], columns: set[str], label: str, key: str) -> str | None:
    if explicit == "":
        return None
    if explicit is not None:
        if explicit not in columns:
            raise TaskError(f"task.user.{key}={explicit!r} is not a column of {label}; "
                            f"columns: {', '.join(sorted(columns))}")
        return explicit
    found = [c for c in candidates if c in columns]
    if len(found) > 1:
        raise TaskError(f"{label}: more than one column could be the {key.split('_')[0]} ({', '.join(found)}); "
                        f"set task.user.{key}")
    return found[0] if found else None


def _is_messages(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def _solution_text(value: Any, where: str, column: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        return value
    if _is_messages(value):  # TRL's conversational completion: [{"role": "assistant", "content": ...}]
        return value[-1]["content"]
    raise TaskError(f"{where}: column {column!r} holds a {type(value).__name__}; give the solution as a string "
                    "or an assistant message, or leave it empty")


def to_examples(label: str, rows: list[tuple[str, dict]], cfg: UserTaskConfig, *, need_solution: bool = False
                ) -> list[Example]:
    """Rows of one source as Examples; one TaskError line for a missing column or the first bad row."""
    columns = set().union(*(row.keys() for _, row in rows))
    prompt_col = _column(cfg.prompt_column, PROMPT_COLUMNS, columns, label, "prompt_column")
    if prompt_col is None:
        raise TaskError(f"{label}: no prompt column (looked for {', '.join(PROMPT_COLUMNS)}; columns: "
                        f"{', '.join(sorted(columns))}); set task.user.prompt_column")
    solution_col = _column(cfg.solution_column, SOLUTION_COLUMNS, columns, label, "solution_column")
    if need_solution and solution_col is None:
        raise TaskError(f"{label}: no solution column for SFT (looked for {', '.join(SOLUTION_COLUMNS)}; columns: "
                        f"{', '.join(sorted(columns))}); set task.user.solution_column")
    answer_col = next((c for c in ANSWER_COLUMNS if c in columns), None)
    examples = []
    for rid, row in rows:
        prompt = row.get(prompt_col)
        if isinstance(prompt, str) and prompt.strip():
            messages, question = None, prompt
        elif _is_messages(prompt):
            messages = [dict(m) for m in prompt]
            question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"])
        else:
            raise TaskError(f"{label} {rid}: column {prompt_col!r} holds {str(prompt)[:60]!r}; give a non-empty string "
                            "or chat messages [{'role': ..., 'content': ...}], or drop the row")
        solution = _solution_text(row.get(solution_col), rid, solution_col) if solution_col else None
        if need_solution and solution is None:
            raise TaskError(f"{label} {rid}: no solution in column {solution_col!r}; fill it or drop the row")
        answer = row.get(answer_col) if answer_col else None
        meta = {"columns": {k: v for k, v in row.items() if k != prompt_col}, "messages": messages}
        examples.append(Example(id=rid, question=question, answer="" if answer is None else str(answer),
                                solution=solution, meta=meta))
    return examples


def _held_out(n: int, fraction: float) -> int:
    return 0 if fraction <= 0 else max(1, round(n * fraction))


def _key(example: Example) -> str:
    return json.dumps(example.meta["messages"]) if example.meta["messages"] else example.question


class UserTask(Task):
    """The user's rows, prompts and columns; graded only by the reward functions (task.reward_funcs)."""

    name = "user"

    def __init__(self, cfg: UserTaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.train is None:
            raise TaskError("task 'user' has no data; set task.user.train to a .jsonl/.parquet/.csv file or a hub id "
                            "(from Python also a datasets.Dataset or a list of dicts)")
        train = self._load("train", cfg.hub_split)
        held = self._hold_out(train)
        self.splits[RL_TRAIN] = [e for e in train if _key(e) not in held[TEST] | held[VAL]]
        if cfg.sft is not None:
            label, rows = read_source(cfg.sft, "sft", hub_split=cfg.hub_split, limit=cfg.limit)
            self.splits[SFT_TRAIN] = to_examples(label, rows, cfg, need_solution=True)
        else:
            self.splits[SFT_TRAIN] = [e for e in self.splits[RL_TRAIN] if e.solution is not None]
        for split, what in ((VAL, "val"), (TEST, "test"), (TEST_HARD, "test_hard")):
            if getattr(cfg, what) is not None:
                self.splits[split] = self._load(what, _HUB_SPLITS[what])
            elif split in held:
                self.splits[split] = self._first_of_each(train, held[split])

    def _load(self, what: str, hub_split: str) -> list[Example]:
        label, rows = read_source(getattr(self.cfg, what), what, hub_split=hub_split, limit=self.cfg.limit)
        return to_examples(label, rows, self.cfg)

    def _hold_out(self, train: list[Example]) -> dict[str, set[str]]:
        """The prompts (keys) held out of train for test and val, by a seeded shuffle of the distinct prompts."""
        cfg = self.cfg
        keys = list(dict.fromkeys(_key(e) for e in train))
        n_test = _held_out(len(keys), cfg.test_fraction) if cfg.test is None else 0
        n_val = _held_out(len(keys), cfg.val_fraction) if cfg.val is None else 0
        if n_test + n_val >= len(keys):
            raise TaskError(f"task.user.train has {len(keys)} distinct prompts: too few to hold out test_fraction="
                            f"{cfg.test_fraction} and val_fraction={cfg.val_fraction} and still train; lower them or "
                            "give task.user.test / task.user.val")
        random.Random(cfg.split_seed).shuffle(keys)
        return {TEST: set(keys[:n_test]), VAL: set(keys[n_test:n_test + n_val])}

    @staticmethod
    def _first_of_each(train: list[Example], keys: set[str]) -> list[Example]:
        seen: set[str] = set()
        out = []
        for e in train:
            if _key(e) in keys and _key(e) not in seen:
                seen.add(_key(e))
                out.append(e)
        return out

    # -- the contract -----------------------------------------------------------------------

    def prompt(self, example: Example) -> str:
        return example.question

    def render(self, example: Example, tokenizer: Any) -> str:
        messages = example.meta.get("messages")
        if not messages:
            return example.question
        if not getattr(tokenizer, "chat_template", None):
            raise TaskError(f"example {example.id!r} has a chat-message prompt but the model's tokenizer has no chat "
                            "template; give string prompts, or a model (or tokenizer) with a chat template")
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raises its own types on messages the template does not accept
            raise TaskError(f"example {example.id!r}: the chat template refused its messages "
                            f"({type(exc).__name__}: {exc}); check their roles and order") from None

    def check_tokenizer(self, tokenizer: Any) -> None:
        for examples in self.splits.values():
            chat = next((e for e in examples if e.meta.get("messages")), None)
            if chat is not None:
                self.render(chat, tokenizer)

    def reward_inputs(self, example: Example) -> tuple[Any, dict[str, Any]]:
        return example.meta.get("messages") or example.question, example.meta["columns"]

    def grade(self, example: Example, completion: str) -> float:
        if self.reward_set is None:  # build_task always sets them; a task built by hand may not have
            raise TaskError("task 'user' is graded by task.reward_funcs; set at least one reward function")
        return self.grade_batch([example], [completion])[0]
