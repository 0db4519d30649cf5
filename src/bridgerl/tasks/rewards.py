"""Reward functions with TRL's contract, used for the training reward AND the evaluation grade.

A reward function is `f(prompts, completions, **columns) -> list[float | None]` (TRL's GRPOTrainer
contract): `prompts[i]` is the i-th prompt as the dataset gives it (a string, or a list of chat
messages), `completions[i]` the model's completion (a string, or `[{"role": "assistant", "content":
text}]` when the prompt is chat messages), and every other column of the data arrives as a keyword
argument holding one value per completion. A function returns one number per completion, or None
where it does not apply (TRL's multi-task convention).

How bridgerl combines them (`task.reward_funcs`, `task.reward_weights`, `task.accuracy_threshold`):
- training reward = sum over functions of weight * value, skipping None (all None: 0.0, as TRL's nansum);
- evaluation grade = 1.0 where that weighted reward >= accuracy_threshold, else 0.0. Training and
  evaluation therefore call the same functions and can never drift apart.
Departures from TRL, stated once: `completion_ids` and `trainer_state` are not passed; a function
without `**kwargs` gets only the arguments it names (TRL would fail on the others); NaN is refused
instead of being read as None (None says "does not apply"; NaN is almost always a bug).

Bad functions fail with one RewardError line naming the function: an import that fails, a raise
(with the example and the exception), a wrong number of values, a value that is not a number, NaN or
infinity, an argument that names no column (listing the columns there are). `build_task` calls every
function once on a few examples (their expert solutions, or "") before anything is written.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import math
import numbers
import os
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bridgerl.tasks.base import SFT_TRAIN, Example, Task, TaskError

RewardFunc = Callable[..., Sequence[float | None]]
PASSED = ("prompts", "completions")  # the arguments every call gets besides the columns


class RewardError(TaskError):
    """A reward function could not be loaded, or misbehaved: one line naming it and the fix."""


def completion_text(completion: Any) -> str:
    """The text of a completion given as a string or as chat messages (the last message's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, (list, tuple)) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return ""


# ------------------------------------------------------------------------ built-in graders


def math_answer(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """The math task's grader: math-verify on the last \\boxed{} (else the last line) against `answer`."""
    from bridgerl.tasks.grading import grade_math

    return [grade_math(str(a), completion_text(c)) for c, a in zip(completions, answer, strict=True)]


def arith_answer(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """The embedded testbed's grader: the integer after the first '#' equals `answer`."""
    from bridgerl.tasks.arith import parse_final_answer

    out = []
    for c, a in zip(completions, answer, strict=True):
        got, gold = parse_final_answer(completion_text(c)), parse_final_answer(f"#{a}")
        out.append(1.0 if got is not None and got == gold else 0.0)
    return out


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def number_answer(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """For "answer with the number" tasks: the completion's last number (thousands commas dropped) equals
    `answer`. Unlike math_answer, an expression that equals the answer does not count: math-verify reads
    "To find 81 + 31, we need to" as 81 + 31 = 112, and GRPO on SmolLM2 learned within 20 steps to restate
    the question that way (docs/results.md, "A real model")."""
    out = []
    for c, a in zip(completions, answer, strict=True):
        found = _NUMBER.findall(completion_text(c).replace(",", ""))
        try:
            out.append(1.0 if found and float(found[-1]) == float(str(a).replace(",", "")) else 0.0)
        except ValueError:  # an answer that is not a number: nothing matches it
            out.append(0.0)
    return out


# name -> function, usable in task.reward_funcs by name (e.g. `task.reward_funcs=[math_answer]`)
BUILTIN: dict[str, RewardFunc] = {"math_answer": math_answer, "arith_answer": arith_answer,
                                  "number_answer": number_answer}


# ------------------------------------------------------------------------------- loading


def load_reward(spec: str | RewardFunc) -> tuple[str, RewardFunc]:
    """(display name, function) from a callable, a built-in name, 'pkg.module:function' or 'file.py:function'."""
    if callable(spec):
        return f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', type(spec).__name__)}", spec
    if spec in BUILTIN:
        return spec, BUILTIN[spec]
    target, sep, attr = spec.rpartition(":")
    if not (sep and target and attr):
        raise RewardError(f"task.reward_funcs entry {spec!r} is not 'pkg.module:function', "
                          f"'path/to/file.py:function' or a built-in ({', '.join(BUILTIN)})")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    module = _import_file(Path(target).expanduser(), spec) if is_file else _import_module(target, spec)
    fn = getattr(module, attr, None)
    if fn is None:
        names = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise RewardError(f"task.reward_funcs {spec!r}: {target} has no {attr!r}; its functions: {', '.join(names) or 'none'}")
    if not callable(fn):
        raise RewardError(f"task.reward_funcs {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    return spec, fn


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _import_file(path: Path, spec: str) -> Any:
    if not path.is_file():
        raise RewardError(f"task.reward_funcs {spec!r}: file {str(path)!r} not found "
                          f"(relative paths start at the working directory, {os.getcwd()})")
    path = path.resolve()
    # A fresh module on every load (a notebook's edits count), under a name unique to the file, kept in
    # sys.modules so that pickling and dataclasses inside it work; its folder is importable meanwhile.
    name = f"bridgerl_user_rewards.{path.stem}_{abs(hash(str(path))):x}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent))
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's module may raise anything while importing
        sys.modules.pop(name, None)
        raise RewardError(f"task.reward_funcs {spec!r}: importing {path} failed: {_first_line(exc)}") from None
    finally:
        sys.path.remove(str(path.parent))
    return module


def _import_module(target: str, spec: str) -> Any:
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:  # `bridgerl train` from the folder holding my_rewards.py finds it, as `python -m` would
        sys.path.append(cwd)
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise RewardError(f"task.reward_funcs {spec!r}: no module named {exc.name!r}; install it, run from the folder "
                          f"holding it, or give a file path 'path/to/file.py:{spec.rpartition(':')[2]}'") from None
    except Exception as exc:
        raise RewardError(f"task.reward_funcs {spec!r}: importing {target} failed: {_first_line(exc)}") from None
    finally:
        if added:
            sys.path.remove(cwd)


def _arguments(fn: RewardFunc) -> tuple[set[str] | None, set[str]]:
    """(the keyword names fn accepts, None for **kwargs; the names it requires)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature: pass everything
        return None, set()
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    required = {p.name for p in params if p.name in named and p.default is p.empty}
    return (None if any(p.kind == p.VAR_KEYWORD for p in params) else named), required


def _await(result: Any) -> Any:
    """The value of an `async def` reward (run on a thread of its own: a notebook already runs a loop)."""
    box: list[Any] = []

    async def wrap() -> None:
        box.append(await result)

    thread = threading.Thread(target=lambda: asyncio.run(wrap()))
    thread.start()
    thread.join()
    if not box:
        raise RuntimeError("the coroutine did not return")
    return box[0]


# --------------------------------------------------------------------------------- the set


class RewardSet:
    """The functions of task.reward_funcs with their weights and the evaluation threshold."""

    def __init__(self, funcs: list[str | RewardFunc], weights: list[float] | None = None, threshold: float = 1.0):
        if not funcs:
            raise RewardError("task.reward_funcs is empty; give at least one 'path/to/file.py:function'")
        self.funcs = [load_reward(f) for f in funcs]
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(self.funcs)
        if len(self.weights) != len(self.funcs):
            raise RewardError(f"task.reward_weights has {len(self.weights)} weights for {len(self.funcs)} reward functions")
        self.threshold = threshold
        self._arguments = [_arguments(fn) for _, fn in self.funcs]

    def check(self, task: Task) -> None:
        """Every argument named by a function is a column of every split; then a dry run on a few examples."""
        for split, examples in task.splits.items():
            if not examples or split == SFT_TRAIN:  # SFT rows are imitated, never graded
                continue
            _, columns = task.reward_inputs(examples[0])
            for (name, _), (_, required) in zip(self.funcs, self._arguments):
                missing = sorted(required - set(PASSED) - set(columns))
                if missing:
                    raise RewardError(
                        f"reward function {name} needs {', '.join(map(repr, missing))}, which the {split} data has no "
                        f"column for; columns: {', '.join(sorted(columns)) or 'none'}; rename the column or give the "
                        "argument a default")
            sample = examples[:2]
            self.per_function(task, sample, [e.solution or "" for e in sample])

    def per_function(self, task: Task, examples: list[Example], completions: list[str]) -> list[list[float | None]]:
        """values[j][i]: function j's reward for completion i (None: does not apply)."""
        inputs = [task.reward_inputs(e) for e in examples]
        prompts = [prompt for prompt, _ in inputs]
        keys = list(inputs[0][1]) if inputs else []
        columns = {k: [cols.get(k) for _, cols in inputs] for k in keys}
        # TRL's conversational format: a chat prompt's completion is a list holding one assistant message
        shown = [[{"role": "assistant", "content": c}] if isinstance(p, list) else c for c, p in zip(completions, prompts)]
        return [self._call(name, fn, accepted, examples, {"prompts": prompts, "completions": shown, **columns})
                for (name, fn), (accepted, _) in zip(self.funcs, self._arguments)]

    def _call(self, name: str, fn: RewardFunc, accepted: set[str] | None, examples: list[Example],
              kwargs: dict[str, list[Any]]) -> list[float | None]:
        if accepted is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        try:
            out = fn(**kwargs)
            if inspect.isawaitable(out):
                out = _await(out)
        except Exception as exc:  # a user function may raise anything: name it, and the first example it fails on
            i = self._first_failing(fn, kwargs, len(examples))
            where = f"example {examples[i].id!r} (completion {i} of the batch)" if i is not None else \
                f"a batch of {len(examples)} examples, first {examples[0].id!r}"
            raise RewardError(f"reward function {name} raised on {where}: {_first_line(exc)}") from None
        if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
            raise RewardError(f"reward function {name} returned a {type(out).__name__}; "
                              "return a list with one float (or None) per completion")
        values = list(out.tolist() if hasattr(out, "tolist") else out)  # numpy arrays, tensors
        if len(values) != len(examples):
            raise RewardError(f"reward function {name} returned {len(values)} values for {len(examples)} completions; "
                              "return one float (or None) per completion")
        for i, v in enumerate(values):
            if v is None:
                continue
            if not isinstance(v, numbers.Real):
                raise RewardError(f"reward function {name} returned {v!r} ({type(v).__name__}) for example "
                                  f"{examples[i].id!r}; return a float, or None where it does not apply")
            if not math.isfinite(float(v)):
                raise RewardError(f"reward function {name} returned {float(v)} for example {examples[i].id!r}; "
                                  "return a finite float, or None where it does not apply")
            values[i] = float(v)
        return values

    @staticmethod
    def _first_failing(fn: RewardFunc, kwargs: dict[str, list[Any]], n: int) -> int | None:
        for i in range(n):
            try:
                out = fn(**{k: v[i:i + 1] for k, v in kwargs.items()})
                if inspect.isawaitable(out):
                    _await(out)
            except Exception:  # the one we are looking for
                return i
        return None

    def score(self, task: Task, examples: list[Example], completions: list[str]) -> list[float]:
        """The training rewards: sum_j weight_j * value_j over the functions that apply (none: 0.0)."""
        if not examples:
            return []
        values = self.per_function(task, examples, completions)
        return [sum(w * v[i] for w, v in zip(self.weights, values) if v[i] is not None) for i in range(len(examples))]

    def grade(self, task: Task, examples: list[Example], completions: list[str]) -> list[float]:
        """The evaluation grades: 1.0 where the weighted reward >= the threshold."""
        return [1.0 if r >= self.threshold else 0.0 for r in self.score(task, examples, completions)]
