"""The embedded arithmetic task: seeded splits, expert chains, and a strict, total grader."""

from __future__ import annotations

import random

import pytest

from bridgerl.config import ArithConfig
from bridgerl.tasks.arith import ArithTask, evaluate, format_chain, parse_final_answer
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, SPLITS, TEST, TEST_HARD, VAL, Example, TaskError

SMALL = dict(n_rl_train=300, n_sft_train=300, n_test=100, n_test_hard=100)


def small(**kw) -> ArithConfig:
    return ArithConfig(**{**SMALL, **kw})


@pytest.fixture(scope="module")
def task() -> ArithTask:
    return ArithTask(ArithConfig())


def test_same_seed_gives_identical_splits_and_ignores_global_rng():
    random.seed(1)
    a = ArithTask(small(seed=7))
    random.seed(2)
    b = ArithTask(small(seed=7))
    for s in SPLITS:
        assert a.split(s) == b.split(s)


def test_different_seed_gives_different_problems():
    a, b = ArithTask(small(seed=1)), ArithTask(small(seed=2))
    assert [e.question for e in a.split(TEST)] != [e.question for e in b.split(TEST)]


def test_split_sizes_follow_config(task):
    cfg = task.config
    assert len(task.split(RL_TRAIN)) == cfg.n_rl_train
    assert len(task.split(SFT_TRAIN)) == cfg.n_sft_train
    assert len(task.split(TEST)) == cfg.n_test
    assert len(task.split(TEST_HARD)) == cfg.n_test_hard


def test_test_splits_are_disjoint_from_both_train_splits(task):
    train = {e.question for e in task.split(RL_TRAIN) + task.split(SFT_TRAIN)}
    test = [e.question for e in task.split(TEST)]
    hard = [e.question for e in task.split(TEST_HARD)]
    assert not train & set(test) and not train & set(hard)
    assert len(set(test)) == len(test) and len(set(hard)) == len(hard)


def test_val_split_is_distinct_problems_like_test_in_no_other_split(task):
    val = [e.question for e in task.split(VAL)]
    assert len(val) == task.config.n_val == len(set(val))
    others = {e.question for s in (RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD) for e in task.split(s)}
    assert not others & set(val)
    assert {e.meta["operands"] for e in task.split(VAL)} == set(task.config.train_operands)


def test_training_knobs_change_no_evaluation_problem():
    a = ArithTask(small(n_val=50))
    b = ArithTask(small(n_val=50, n_rl_train=17, n_sft_train=40, sft_operands=[3], trace_error_rate=0.5))
    for s in (TEST, TEST_HARD, VAL):
        assert a.split(s) == b.split(s)
    # and the trace error rate changes no training problem either, only some traces
    c = ArithTask(small(n_val=50, trace_error_rate=0.5))
    for s in (RL_TRAIN, SFT_TRAIN):
        assert [e.question for e in a.split(s)] == [e.question for e in c.split(s)]
    # a space with fewer unused problems than n_val gives what is left instead of failing
    tiny = ArithTask(ArithConfig(train_operands=[2], hard_operands=[3], n_test=20, n_test_hard=20, n_rl_train=50,
                                 n_sft_train=50, n_val=200))
    assert 0 < len(tiny.split(VAL)) < 200


def test_val_size_changes_neither_test_split():
    a, b = ArithTask(small(n_val=0)), ArithTask(small(n_val=50))
    assert len(a.split(VAL)) == 0 and len(b.split(VAL)) == 50
    for s in (TEST, TEST_HARD):
        assert a.split(s) == b.split(s)


def test_sft_operands_narrow_the_traces_only():
    task = ArithTask(small(sft_operands=[3]))
    assert {e.meta["operands"] for e in task.split(SFT_TRAIN)} == {3}
    assert {e.meta["operands"] for e in task.split(RL_TRAIN)} == set(task.config.train_operands)


def test_slipped_traces_have_one_wrong_step_carried_on_and_a_wrong_answer():
    task = ArithTask(small(trace_error_rate=0.3))
    rows = task.split(SFT_TRAIN)
    slipped = [e for e in rows if "trace_slip" in e.meta]
    assert 0.2 < len(slipped) / len(rows) < 0.4
    for e in slipped:
        k, delta = e.meta["trace_slip"]
        steps = e.solution.split(";")[:-1]
        wrong = [i for i, st in enumerate(steps) if evaluate(*_fact(st)) != int(st.split("=")[1])]
        assert wrong == [k] and delta in (-2, -1, 1, 2)
        for prev, nxt in zip(steps, steps[1:]):  # carried on from the written (wrong) value
            assert nxt.startswith(prev.split("=")[1] + "+")
        assert task.grade(e, e.solution) == 0.0
    assert all(task.grade(e, e.solution) == 1.0 for e in rows if "trace_slip" not in e.meta)


def _fact(step: str) -> tuple[list[int], list[str]]:
    left = step.split("=")[0]
    a, b = left.split("+")
    return [int(a), int(b)], ["+"]


def test_v1_draws_reproduce_the_first_testbed_problems():
    """configs/testbed-v1.yaml: the first testbed's splits, pinned by a few of their problems."""
    v1 = ArithTask(ArithConfig(hard_operands=[6], n_test=200, n_test_hard=200, n_val=200, n_sft_train=4000,
                               trace_error_rate=0.0, v1_draws=True))
    got = [v1.split(s)[i].question for s in (TEST, TEST_HARD, RL_TRAIN, SFT_TRAIN, VAL) for i in (0, -1)]
    assert got == V1_PINNED


def test_v1_preset_file_reproduces_the_first_testbed():
    from pathlib import Path

    from bridgerl.config_load import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "testbed-v1.yaml")
    v1 = ArithTask(cfg.task.arith)
    assert [v1.split(s)[i].question for s in (TEST, TEST_HARD, RL_TRAIN, SFT_TRAIN, VAL) for i in (0, -1)] == V1_PINNED
    assert all("trace_slip" not in e.meta for e in v1.split(SFT_TRAIN)) and cfg.model.name_or_path == "embedded-v1"


def test_test_has_training_operand_counts_and_hard_split_has_more(task):
    cfg = task.config
    for s in (RL_TRAIN, SFT_TRAIN, TEST):
        assert {e.meta["operands"] for e in task.split(s)} <= set(cfg.train_operands)
    assert {e.meta["operands"] for e in task.split(TEST_HARD)} <= set(cfg.hard_operands)
    assert min(e.meta["operands"] for e in task.split(TEST_HARD)) > max(cfg.train_operands)
    for e in task.split(TEST_HARD):
        assert e.question.count("+") + e.question.count("-") + e.question.count("*") == e.meta["operands"] - 1


def test_rl_train_has_answers_and_both_train_splits_carry_expert_chains(task):
    assert all(e.answer for e in task.split(RL_TRAIN))
    for e in task.split(RL_TRAIN) + task.split(SFT_TRAIN):  # LUFFY injects the RL problem's own chain
        assert e.solution.count(";") == e.meta["operands"] - 1
        if "trace_slip" not in e.meta:  # a slipped trace (trace_error_rate) ends on a wrong answer
            assert e.solution.endswith(f";#{e.answer}")


def test_prompt_and_chain_have_the_documented_form():
    task = ArithTask(small())
    e = Example(id="x", question="3+4+5+2", answer="14", solution=format_chain([3, 4, 5, 2], "+++"))
    assert task.prompt(e) == "Q:3+4+5+2=\nA:"
    assert e.solution == "3+4=7;7+5=12;12+2=14;#14"
    assert task.name == "arith" and task.use_chat_template is False


def test_operators_are_applied_left_to_right_without_precedence():
    assert evaluate([3, 5, 2], "-*") == -4
    assert format_chain([3, 5, 2], "-*") == "3-5=-2;-2*2=-4;#-4"
    assert evaluate([2, 3, 4], "+*") == 20


@pytest.mark.parametrize("ops", ["+", "+-", "+-*"])
def test_every_expert_solution_grades_one_in_every_split(ops):
    task = ArithTask(small(ops=ops, max_value=12, trace_error_rate=0.0))  # a correct teacher: every trace grades 1
    for s in SPLITS:
        for e in task.split(s):
            assert task.grade(e, format_chain(*_parse(e.question))) == 1.0
    assert all(task.grade(e, e.solution) == 1.0 for e in task.split(SFT_TRAIN))


def _parse(question: str) -> tuple[list[int], list[str]]:
    operands, ops, num = [], [], ""
    for i, ch in enumerate(question):
        if ch.isdigit() or (ch == "-" and (i == 0 or not question[i - 1].isdigit())):
            num += ch
        else:
            operands.append(int(num))
            ops.append(ch)
            num = ""
    operands.append(int(num))
    return operands, ops


def test_direct_answer_and_trailing_whitespace_or_eos_grade_one():
    task = ArithTask(small())
    e = Example(id="x", question="3+4", answer="7")
    for c in ("#7", "3+4=7;#7", "#7\n", "#7 \nQ:1+1=", "#7</s>", "#7</s><pad><pad>", "  #7"):
        assert task.grade(e, c) == 1.0, c


def test_wrong_or_malformed_answers_grade_zero():
    task = ArithTask(small())
    e = Example(id="x", question="3+4", answer="7")
    bad = ["#8", "7", "3+4=7", "# 7", "#07", "#+7", "#7;", "#7.0", "#7a", "#", "", "##7",
           "#8;#7", "#-7", "#-0", "#7;3+4=7"]
    for c in bad:
        assert task.grade(e, c) == 0.0, c


def test_only_the_first_answer_mark_counts():
    assert parse_final_answer("#3 #7") == 3
    assert parse_final_answer("1+2=3;#3\n#4") == 3


def test_negative_answers_are_parsed():
    task = ArithTask(small())
    e = Example(id="x", question="3-5", answer="-2")
    assert task.grade(e, "3-5=-2;#-2") == 1.0


@pytest.mark.parametrize(
    "completion",
    [None, 7, b"#7", ["#7"], "#" + "9" * 10_000, "\x00#\x00", "#\ud800", "#٣", "</s>#", "#-", "#--7", "\n" * 50],
)
def test_grade_never_raises_on_garbage(completion):
    task = ArithTask(small())
    e = Example(id="x", question="3+4", answer="7")
    assert task.grade(e, completion) == 0.0


def test_grade_never_raises_on_a_malformed_example():
    task = ArithTask(small())
    assert task.grade(Example(id="x", question="?", answer="seven"), "#7") == 0.0
    assert task.grade(None, "#7") == 0.0


def test_grade_is_deterministic(task):
    e = task.split(TEST)[0]
    completions = [e.solution or "#1", "#" + e.answer, "junk"]
    assert [task.grade(e, c) for c in completions] == [task.grade(e, c) for c in completions]


def test_difficulty_options_change_the_problems():
    base = ArithTask(small())
    wide = ArithTask(small(max_value=99))
    assert max(max(_parse(e.question)[0]) for e in wide.split(TEST)) > 9
    assert max(max(_parse(e.question)[0]) for e in base.split(TEST)) <= 9
    mixed = ArithTask(small(ops="+-*"))
    used = {ch for e in mixed.split(RL_TRAIN) for ch in e.question if ch in "+-*"}
    assert used == {"+", "-", "*"}
    longer = ArithTask(small(train_operands=[3, 5], hard_operands=[8]))
    assert {e.meta["operands"] for e in longer.split(RL_TRAIN)} == {3, 5}
    assert {e.meta["operands"] for e in longer.split(TEST_HARD)} == {8}
    sized = ArithTask(small(n_rl_train=17, n_test=5))
    assert len(sized.split(RL_TRAIN)) == 17 and len(sized.split(TEST)) == 5


def test_impossible_or_invalid_configs_raise_task_error():
    with pytest.raises(TaskError):
        ArithTask(small(ops="/"))
    with pytest.raises(TaskError):
        ArithTask(small(train_operands=[1]))
    with pytest.raises(TaskError):
        ArithTask(small(max_value=1, train_operands=[2], n_test=10))  # only 4 distinct problems


# Taken from the first testbed's code (git history, before the v2 draw order), not from the current code.
V1_PINNED = ['1+0+1+9', '3+8+6+7', '1+5+8+4+9+4', '5+0+1+1+3+1', '7+8+3+0', '2+7+6+5', '7+7+3+7', '3+4+3+3',
             '7+8+7+3', '0+5+1+5']
