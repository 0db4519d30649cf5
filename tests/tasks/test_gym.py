"""The reasoning-gym adapter: small splits, the dataset's own verifier as grader, SFT from worked solutions."""

from __future__ import annotations

import pytest

pytest.importorskip("reasoning_gym", reason="reasoning-gym is not installed (pip install 'bridgerl[gym]')")

from bridgerl.config import GymTaskConfig, TaskConfig  # noqa: E402
from bridgerl.tasks import build_task  # noqa: E402
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, TaskError  # noqa: E402
from bridgerl.tasks.gym import GymTask  # noqa: E402
from bridgerl.tasks.math import PROMPT_SUFFIX  # noqa: E402


@pytest.fixture(scope="module")
def task() -> GymTask:
    return GymTask(GymTaskConfig(size=30, test_size=12, hard_dataset="basic_arithmetic", seed=7))


def test_splits_have_the_configured_sizes(task: GymTask) -> None:
    assert len(task.split(RL_TRAIN)) == 30
    assert len(task.split(SFT_TRAIN)) == 30  # every gsm_symbolic entry carries a worked solution
    assert len(task.split(TEST)) == 12 and len(task.split(TEST_HARD)) == 12
    assert task.name == "gym" and task.use_chat_template


def test_test_split_is_disjoint_from_training(task: GymTask) -> None:
    train = {e.question for e in task.split(RL_TRAIN)} | {e.question for e in task.split(SFT_TRAIN)}
    assert not train & {e.question for e in task.split(TEST)}
    assert not train & {e.question for e in task.split(TEST_HARD)}


def test_prompt_is_the_boxed_paper_prompt(task: GymTask) -> None:
    example = task.split(RL_TRAIN)[0]
    assert task.prompt(example) == f"{example.question}\n{PROMPT_SUFFIX}"


def test_the_datasets_own_answers_grade_one_and_wrong_ones_zero(task: GymTask) -> None:
    for split in (RL_TRAIN, TEST, TEST_HARD):
        for example in task.split(split):
            assert task.grade(example, f"Some reasoning.\n\\boxed{{{example.answer}}}") == 1.0
            assert task.grade(example, f"The answer is\n{example.answer}") == 1.0  # last-line fallback
            assert task.grade(example, "\\boxed{123456789}") == 0.0  # reasoning-gym's 0.01 is binarised
            assert task.grade(example, "") == 0.0
            assert task.grade(example, "no number at all") == 0.0


def test_sft_solutions_end_boxed_and_grade_one(task: GymTask) -> None:
    for example in task.split(SFT_TRAIN):
        assert example.solution.endswith(f"\\boxed{{{example.answer}}}.")
        assert "####" not in example.solution
        assert task.grade(example, example.solution) == 1.0


def test_datasets_without_worked_solutions_have_an_empty_sft_split() -> None:
    task = GymTask(GymTaskConfig(rl_dataset="basic_arithmetic", sft_dataset="basic_arithmetic", size=10, test_size=5))
    assert len(task.split(RL_TRAIN)) == 10 and task.split(SFT_TRAIN) == []
    assert all(task.grade(e, f"\\boxed{{{e.answer}}}") == 1.0 for e in task.split(TEST))


def test_build_task_and_unknown_dataset() -> None:
    cfg = TaskConfig(name="gym", gym=GymTaskConfig(size=4, test_size=2))
    assert isinstance(build_task(cfg), GymTask)
    with pytest.raises(TaskError, match="reasoning-gym could not build dataset 'no_such_dataset'"):
        GymTask(GymTaskConfig(rl_dataset="no_such_dataset", size=2, test_size=2))
