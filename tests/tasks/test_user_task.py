"""Your own data as a task: every source kind, string and chat prompts, column mapping, held-out splits."""

from __future__ import annotations

import csv
import json

import pytest

from bridgerl.config import TaskConfig, UserTaskConfig
from bridgerl.models.tiny import build_tokenizer
from bridgerl.tasks import build_task
from bridgerl.tasks.base import TaskError, render_prompt

ROWS = [{"prompt": f"Q:{i}+1=\nA:", "answer": str(i + 1), "solution": f"{i}+1={i + 1};#{i + 1}"} for i in range(10)]
# a ChatML-like template, rendered by transformers' real jinja machinery
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")


def never(completions, **kw):
    return [0.0] * len(completions)


def task_of(**user):
    return build_task(TaskConfig(name="user", reward_funcs=[never], user=UserTaskConfig(**user)))


def _write(tmp_path, kind, rows):
    path = tmp_path / f"data.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "csv":
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "list", "dataset", "dataframe"])
def test_every_source_kind_gives_the_same_examples(tmp_path, kind):
    if kind in ("jsonl", "csv", "parquet"):
        source = _write(tmp_path, kind, ROWS)
    elif kind == "list":
        source = ROWS
    elif kind == "dataset":
        import datasets

        source = datasets.Dataset.from_list(ROWS)
    else:
        import pandas as pd

        source = pd.DataFrame(ROWS)
    task = task_of(train=source, test_fraction=0.0, test=ROWS[:2])
    got = [(e.question, e.answer, e.solution, e.meta["columns"]) for e in task.split("rl_train")]
    assert got == [(r["prompt"], r["answer"], r["solution"], {"answer": r["answer"], "solution": r["solution"]})
                   for r in ROWS]
    assert task.split("sft_train") == task.split("rl_train")


def test_string_prompts_are_fed_as_they_are_and_chat_prompts_through_the_chat_template():
    chat = [{"messages": [{"role": "system", "content": "Add."}, {"role": "user", "content": "1+1"}], "answer": "2"}]
    tok = build_tokenizer()
    plain = task_of(train=ROWS, test=ROWS[:1])
    assert render_prompt(plain, plain.split("test")[0], tok) == "Q:0+1=\nA:"
    chatty = task_of(train=chat * 3, test=chat)
    tok.chat_template = CHAT_TEMPLATE
    assert render_prompt(chatty, chatty.split("test")[0], tok) == "<system>Add.\n<user>1+1\n<assistant>"
    assert chatty.split("test")[0].question == "1+1"


def test_chat_prompts_without_a_chat_template_are_refused_before_training():
    chat = [{"prompt": [{"role": "user", "content": "1+1"}], "answer": "2"}]
    task = task_of(train=chat * 3, test=chat)
    with pytest.raises(TaskError, match="chat-message prompt but the model's tokenizer has no chat template"):
        task.check_tokenizer(build_tokenizer())


def test_solutions_may_come_from_a_separate_sft_source_or_as_assistant_messages():
    def needs_answer(completions, answer, **kw):  # the SFT file has no answer column: it is never graded
        return [0.0] * len(completions)

    sft = [{"prompt": "Q:5+5=\nA:", "completion": [{"role": "assistant", "content": "5+5=10;#10"}]}]
    train = [{"prompt": r["prompt"], "answer": r["answer"]} for r in ROWS]
    task = build_task(TaskConfig(name="user", reward_funcs=[needs_answer],
                                 user=UserTaskConfig(train=train, sft=sft, test=ROWS[:1])))
    assert [e.solution for e in task.split("sft_train")] == ["5+5=10;#10"]
    assert all(e.solution is None for e in task.split("rl_train"))
    with pytest.raises(TaskError, match=r"no solution column for SFT .*columns: prompt\); set task.user.solution_column"):
        task_of(train=ROWS, sft=[{"prompt": "x"}])


def test_held_out_splits_are_seeded_disjoint_and_take_duplicates_with_them():
    rows = ROWS + [ROWS[0]]  # a duplicated prompt leaves train entirely when held out
    task = task_of(train=rows, test_fraction=0.2, val_fraction=0.2, split_seed=3)
    again = task_of(train=rows, test_fraction=0.2, val_fraction=0.2, split_seed=3)
    other = task_of(train=rows, test_fraction=0.2, val_fraction=0.2, split_seed=4)
    q = {s: [e.question for e in task.split(s)] for s in ("rl_train", "test", "val")}
    assert len(q["test"]) == 2 and len(q["val"]) == 2 and len(set(q["rl_train"])) == 6
    assert not (set(q["test"]) & set(q["rl_train"])) and not (set(q["val"]) & set(q["rl_train"]))
    assert not set(q["test"]) & set(q["val"])
    assert [e.question for e in again.split("test")] == q["test"]
    assert [e.question for e in other.split("test")] != q["test"]
    assert task.split("sft_train") == task.split("rl_train") and task.split("test_hard") == []


@pytest.mark.parametrize("user, message", [
    ({"train": None}, "task 'user' has no data; set task.user.train"),
    ({"train": []}, r"task.user.train \(task.user.train\) has no rows"),
    ({"train": ROWS, "test": []}, r"task.user.test \(task.user.test\) has no rows"),
    ({"train": ROWS[:2], "test_fraction": 0.5, "val_fraction": 0.4}, "has 2 distinct prompts: too few to hold out"),
    ({"train": [{"text": "x", "label": 1}]}, r"no prompt column .*columns: label, text\); set task.user.prompt_column"),
    ({"train": [{"prompt": "x", "question": "y"}]}, r"more than one column could be the prompt \(prompt, question\)"),
    ({"train": ROWS, "prompt_column": "q"}, "task.user.prompt_column='q' is not a column of task.user.train; "
                                            "columns: answer, prompt, solution"),
    ({"train": [{"prompt": ""}]}, r"train\[0\]: column 'prompt' holds ''"),
    ({"train": ["just text"]}, r"train\[0\]: a str, not a mapping"),
    ({"train": 42}, "a int is not a data source"),
    ({"train": "missing.jsonl"}, "file 'missing.jsonl' not found"),
])
def test_bad_data_is_one_clear_error(user, message):
    with pytest.raises(TaskError, match=message) as exc:
        task_of(**user)
    assert "\n" not in str(exc.value)


def test_a_user_task_needs_reward_functions():
    with pytest.raises(TaskError, match="set task.reward_funcs"):
        build_task(TaskConfig(name="user", user=UserTaskConfig(train=ROWS)))


def test_a_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{oops\n")
    with pytest.raises(TaskError, match="line 2"):
        task_of(train=str(path))


def test_solution_column_empty_string_turns_sft_off():
    task = task_of(train=ROWS, test=ROWS[:1], solution_column="")
    assert task.split("sft_train") == [] and "solution" in task.split("rl_train")[0].meta["columns"]
