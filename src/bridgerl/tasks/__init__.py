"""Tasks: examples, a prompt and one grader shared by the training reward and the evaluation.

`build_task(cfg.task)` picks a builder from the plain dict `TASKS` by `cfg.name`. Builders import
their task module lazily, so `import bridgerl.tasks` stays light (no math-verify, no reasoning-gym).
Where `cfg.reward_funcs` is set, those functions replace the task's grader (tasks/rewards.py), and
are checked on a few examples before anything is written.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from bridgerl.config import TaskConfig
from bridgerl.tasks.base import SPLITS, Example, Task, TaskError, render_prompt

__all__ = ["TASKS", "SPLITS", "Example", "Task", "TaskError", "build_task", "render_prompt"]


def _arith(cfg: TaskConfig, data_root: str | None) -> Task:
    from bridgerl.tasks.arith import ArithTask

    return ArithTask(cfg.arith)


def _math(cfg: TaskConfig, data_root: str | None) -> Task:
    from bridgerl.tasks.math import MathTask

    return MathTask(cfg.math)


def _gsm8k(cfg: TaskConfig, data_root: str | None) -> Task:
    """GSM8K: the paths in cfg.math where given, else gsm8k/{train,test}.jsonl under the data root."""
    from bridgerl.tasks.math import GSM8K_TEST, GSM8K_TRAIN, MathTask, default_data_root

    root = Path(data_root) if data_root is not None else default_data_root()
    math_cfg = replace(
        cfg.math,
        train_path=cfg.math.train_path or str(root / GSM8K_TRAIN),
        test_path=cfg.math.test_path or str(root / GSM8K_TEST),
    )
    return MathTask(math_cfg, name="gsm8k")


def _gym(cfg: TaskConfig, data_root: str | None) -> Task:
    from bridgerl.tasks.gym import GymTask

    return GymTask(cfg.gym)


def _user(cfg: TaskConfig, data_root: str | None) -> Task:
    from bridgerl.tasks.user import UserTask

    if not cfg.reward_funcs:
        raise TaskError("task 'user' is graded by your reward functions; set task.reward_funcs "
                        "(e.g. [my_rewards.py:correct], or a built-in: math_answer, arith_answer)")
    return UserTask(cfg.user)


# task.name -> builder(task config, data root) -> Task
TASKS: dict[str, Callable[[TaskConfig, str | None], Task]] = {
    "arith": _arith,
    "math": _math,
    "gsm8k": _gsm8k,
    "gym": _gym,
    "user": _user,
}


def build_task(cfg: TaskConfig, *, data_root: str | None = None) -> Task:
    """The task named by `cfg.name`; `data_root` (default `$BRIDGERL_DATA` or ../shared/data) for gsm8k."""
    builder = TASKS.get(cfg.name)
    if builder is None:
        raise TaskError(f"unknown task {cfg.name!r}; choose one of: {', '.join(TASKS)}")
    rewards = None
    if cfg.reward_funcs:  # loaded first: an unimportable function fails before any data is read
        from bridgerl.tasks.rewards import RewardSet

        rewards = RewardSet(cfg.reward_funcs, cfg.reward_weights, cfg.accuracy_threshold)
    task = builder(cfg, data_root)
    if rewards is not None:
        task.reward_set = rewards
        rewards.check(task)
    return task
