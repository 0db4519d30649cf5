"""Examples longer than the model's context: refused at the start, or left out with train.overlong=drop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bridgerl.config_load import load_config
from bridgerl.models.tiny import build_tokenizer
from bridgerl.tasks import build_task
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, TaskError
from bridgerl.trainers.lengths import check_lengths

# 3-operand prompts are 12 tokens with BOS ("Q:1+2+3=\nA:"), 4-operand 14, 6-operand 18 (the tokenizer is
# one token per character); with 48 new tokens a 61-token context fits 3 operands only.
ARGS = ["task.arith.train_operands=[3,4]", "task.arith.n_rl_train=40", "task.arith.n_sft_train=40",
        "task.arith.n_test=20", "task.arith.n_test_hard=10", "rollout.max_new_tokens=48"]
MODEL = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=61))


def _operands(example):
    return example.question.count("+") + 1


def test_drop_leaves_out_exactly_the_examples_that_do_not_fit_and_says_how_many():
    cfg = load_config(None, [*ARGS, "train.overlong=drop"])
    task = build_task(cfg.task)
    before = {s: list(task.split(s)) for s in (RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD)}
    said = []
    check_lengths(cfg, task, build_tokenizer(), MODEL, say=said.append)
    for split in (RL_TRAIN, TEST):
        assert task.split(split) == [e for e in before[split] if _operands(e) == 3]
    assert task.split(SFT_TRAIN) == before[SFT_TRAIN]  # prompt + solution fits: SFT generates nothing
    assert task.split(TEST_HARD) == []
    n_rl = sum(_operands(e) == 4 for e in before[RL_TRAIN])
    n_test = sum(_operands(e) == 4 for e in before[TEST])
    assert 0 < n_rl < 40 and said == [f"train.overlong=drop: left out {n_rl} of 40 rl_train, {n_test} of 20 test, "
                                      "10 of 10 test_hard examples longer than the model's context (61 tokens)"]


def test_by_default_the_first_example_that_does_not_fit_is_named():
    cfg = load_config(None, ARGS)
    task = build_task(cfg.task)
    first = next(e for e in task.split(RL_TRAIN) if _operands(e) == 4)
    with pytest.raises(TaskError, match=f"split 'rl_train', example '{first.id}': its prompt \\(14 tokens\\) \\+ "
                                        "rollout.max_new_tokens \\(48\\) exceeds the context"):
        check_lengths(cfg, task, build_tokenizer(), MODEL)
