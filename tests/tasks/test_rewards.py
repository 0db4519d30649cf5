"""Reward functions with TRL's contract: loading, combining, grading, and one clear error per bad function."""

from __future__ import annotations

import sys
import textwrap

import pytest

from bridgerl.config import ArithConfig, MathTaskConfig, TaskConfig, UserTaskConfig
from bridgerl.tasks import build_task
from bridgerl.tasks.arith import ArithTask
from bridgerl.tasks.base import TaskError
from bridgerl.tasks.rewards import BUILTIN, RewardError, RewardSet, load_reward

ROWS = [{"prompt": "Q:1+2=\nA:", "answer": "3", "kind": "a", "solution": "1+2=3;#3"},
        {"prompt": "Q:2+2=\nA:", "answer": "4", "kind": "b", "solution": "2+2=4;#4"},
        {"prompt": "Q:3+4=\nA:", "answer": "7", "kind": "a", "solution": "3+4=7;#7"}]


def user_task(funcs, rows=ROWS, weights=None, threshold=1.0, **user):
    cfg = TaskConfig(name="user", reward_funcs=list(funcs), reward_weights=weights, accuracy_threshold=threshold,
                     user=UserTaskConfig(train=rows, test=rows, **user))
    return build_task(cfg)


def correct(completions, answer, **kwargs):
    return [1.0 if c.endswith("#" + a) else 0.0 for c, a in zip(completions, answer)]


def test_functions_get_prompts_completions_and_every_other_column_by_name():
    seen = {}

    def spy(prompts, completions, **columns):
        seen.update(prompts=prompts, completions=completions, columns=columns)
        return [0.0] * len(completions)

    task = user_task([spy])
    examples = task.split("test")
    task.reward_batch(examples, ["x", "y", "z"])
    assert seen["prompts"] == [r["prompt"] for r in ROWS] and seen["completions"] == ["x", "y", "z"]
    assert seen["columns"] == {k: [r[k] for r in ROWS] for k in ("answer", "kind", "solution")}


def test_chat_prompts_give_completions_as_assistant_messages():
    rows = [{"messages": [{"role": "user", "content": "1+2?"}], "answer": "3"}]
    seen = {}

    def spy(prompts, completions, **kwargs):
        seen.update(prompts=prompts, completions=completions)
        return [1.0]

    task = user_task([spy], rows=rows)
    task.reward_batch(task.split("test"), ["#3"])
    assert seen["prompts"] == [[{"role": "user", "content": "1+2?"}]]
    assert seen["completions"] == [[{"role": "assistant", "content": "#3"}]]


def test_a_function_without_kwargs_gets_only_the_arguments_it_names():
    def narrow(completions, kind):
        return [1.0 if k == "a" else 0.0 for k in kind]

    task = user_task([narrow])
    assert task.reward_batch(task.split("test"), ["", "", ""]) == [1.0, 0.0, 1.0]


def test_reward_is_the_weighted_sum_skipping_none_and_grade_is_reward_at_threshold():
    def only_a(completions, kind, **kw):  # TRL's multi-task convention: None where it does not apply
        return [0.5 if k == "a" else None for k in kind]

    def nowhere(completions, **kw):
        return [None] * len(completions)

    task = user_task([correct, only_a, nowhere], weights=[1.0, 2.0, 5.0], threshold=2.0)
    completions = ["#3", "#4", "#0"]  # right, right, wrong
    rewards = task.reward_batch(task.split("test"), completions)
    assert rewards == [1.0 + 2.0 * 0.5, 1.0, 2.0 * 0.5]
    assert task.grade_batch(task.split("test"), completions) == [1.0, 0.0, 0.0]  # at the threshold counts
    all_none = user_task([nowhere], threshold=0.0)
    assert all_none.reward_batch(all_none.split("test"), completions) == [0.0, 0.0, 0.0]


def test_builtin_graders_grade_as_the_tasks_own_graders():
    arith = ArithTask(ArithConfig(n_rl_train=4, n_sft_train=4, n_test=20, n_test_hard=2, n_val=0))
    examples = arith.split("test")
    completions = [e.solution if i % 3 else "#" + str(int(e.answer) + 1) for i, e in enumerate(examples)]
    completions[1] = completions[1] + " #999"  # only the first '#' answer counts
    own = arith.grade_batch(examples, completions)
    arith_by_reward = build_task(TaskConfig(name="arith", arith=arith.config, reward_funcs=["arith_answer"]))
    assert arith_by_reward.grade_batch(examples, completions) == own and 0 < sum(own) < len(own)


def test_builtin_math_grader_is_math_verify_on_the_boxed_answer(tmp_path):
    from bridgerl.tasks.grading import grade_math

    grade_math("1", "\\boxed{1}", timeout_s=0)  # imports math-verify and sympy outside the per-answer timeout
    data = tmp_path / "m.jsonl"
    data.write_text('{"question": "Half of 1?", "answer": "\\\\frac{1}{2}"}\n{"question": "2+2?", "answer": "4"}\n')
    cfg = TaskConfig(name="math", math=MathTaskConfig(test_path=str(data)))
    plain, by_reward = build_task(cfg), build_task(TaskConfig(name="math", math=cfg.math, reward_funcs=["math_answer"]))
    examples = plain.split("test")
    completions = ["So \\boxed{\\frac{2}{4}}", "\\boxed{5}"]
    assert by_reward.grade_batch(examples, completions) == plain.grade_batch(examples, completions) == [1.0, 0.0]
    assert set(BUILTIN) == {"math_answer", "arith_answer", "number_answer"}


def test_number_answer_wants_the_number_and_not_an_expression_equal_to_it():
    """math-verify reads a restated question as its value; GRPO on SmolLM2 found that within 20 steps."""
    restated = "To find 81 + 31, we need to perform the arithmetic"
    from bridgerl.tasks.grading import grade_math

    assert grade_math("112", restated) == 1.0  # the loophole number_answer closes
    got = BUILTIN["number_answer"]([restated, "81 + 31 = 112", "112", "It is 1,120.", "", "-7.0", "no"],
                                   ["112", "112", "112", "1120", "112", "-7", "abc"])
    assert got == [0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0]


def test_functions_load_from_a_file_a_module_and_python(tmp_path, monkeypatch):
    (tmp_path / "helper.py").write_text("SUFFIX = '!'\n")
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent("""
        from helper import SUFFIX  # a module beside the reward file is importable

        def shout(completions, **kwargs):
            return [float(c.endswith(SUFFIX)) for c in completions]
    """))
    monkeypatch.chdir(tmp_path)
    name, from_file = load_reward(f"{tmp_path / 'my_rewards.py'}:shout")
    assert name.endswith("my_rewards.py:shout") and from_file(completions=["a!", "b"]) == [1.0, 0.0]
    _, from_module = load_reward("my_rewards:shout")  # from the working directory, as `python -m` would
    assert from_module(completions=["a!"]) == [1.0]
    assert load_reward(correct)[1] is correct
    monkeypatch.delitem(sys.modules, "my_rewards")
    monkeypatch.delitem(sys.modules, "helper")


@pytest.mark.parametrize("source, message", [
    ("nope.py:f", "file 'nope.py' not found"),
    ("no_such_module_xyz:f", "no module named 'no_such_module_xyz'"),
    ("bad.py:f", "importing .*bad.py failed: SyntaxError"),
    ("good.py:missing", "has no 'missing'; its functions: fine"),
    ("good.py:VALUE", "'VALUE' is a int, not a function"),
    ("just_a_name", "is not 'pkg.module:function'"),
])
def test_a_function_that_cannot_be_loaded_is_one_clear_error(tmp_path, monkeypatch, source, message):
    (tmp_path / "bad.py").write_text("def f(:\n")
    (tmp_path / "good.py").write_text("VALUE = 3\ndef fine(completions, **kw):\n    return [0.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RewardError, match=message) as exc:
        RewardSet([source])
    assert "\n" not in str(exc.value)


def _raises_on_b(completions, kind, **kw):
    return [{"a": 1.0}[k] for k in kind]


@pytest.mark.parametrize("func, message", [
    (_raises_on_b, r"reward function .*_raises_on_b raised on example 'test\[1\]' \(completion 1 of the batch\): "
                   r"KeyError: 'b'"),
    (lambda completions, **kw: [1.0], "returned 1 values for 2 completions"),
    (lambda completions, **kw: 1.0, "returned a float; return a list"),
    (lambda completions, **kw: ["1.0"] * len(completions), r"returned '1.0' \(str\) for example 'test\[0\]'"),
    (lambda completions, **kw: [float("nan")] * len(completions), "returned nan for example 'test\\[0\\]'"),
])
def test_a_misbehaving_function_is_one_clear_error_naming_it(func, message):
    task = user_task([correct])
    task.reward_set = RewardSet([func])
    with pytest.raises(RewardError, match=message) as exc:
        task.reward_batch(task.split("test")[:2], ["#3", "#4"])
    assert "\n" not in str(exc.value) and isinstance(exc.value, TaskError)


def test_an_argument_that_names_no_column_is_refused_listing_the_columns():
    with pytest.raises(RewardError, match="needs 'grade', which the rl_train data has no column for; "
                                          "columns: answer, kind, solution; rename"):
        user_task([lambda completions, grade, **kw: [0.0] * len(completions)])


def test_a_misbehaving_function_is_refused_when_the_task_is_built():
    with pytest.raises(RewardError, match="returned 1 values for 2 completions"):
        user_task([lambda completions, **kw: [1.0]])


def test_numpy_results_and_async_functions_are_accepted():
    import numpy as np

    async def later(completions, **kw):
        return [0.25] * len(completions)

    task = user_task([lambda completions, **kw: np.ones(len(completions)), later], weights=[1.0, 4.0])
    assert task.reward_batch(task.split("test"), ["", "", ""]) == [2.0, 2.0, 2.0]
