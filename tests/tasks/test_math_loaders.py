"""Math loaders: every shared benchmark file maps to one schema, with clear errors for bad input."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bridgerl.config import MathTaskConfig, TaskConfig
from bridgerl.tasks import TASKS, build_task
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, VAL, TaskError
from bridgerl.tasks.math import BENCHMARKS, PROMPT_SUFFIX, MathTask, benchmark_task, clean_answer, gsm8k_solution

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared benchmark data not found at {DATA}")
try:
    import math_verify  # noqa: F401

    HAVE_MATH_VERIFY = True
except ImportError:
    HAVE_MATH_VERIFY = False
needs_math_verify = pytest.mark.skipif(not HAVE_MATH_VERIFY, reason="math-verify is not installed")

# Row counts from /work/shared/data/README.md
ROWS = {"math500": 500, "minerva_math": 272, "olympiadbench": 675, "aime24": 30, "amc23": 40, "gsm8k": 1319}


@needs_data
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_file_loads_with_the_readme_row_count(name: str) -> None:
    task = benchmark_task(name, DATA)
    examples = task.split(TEST)
    assert len(examples) == ROWS[name]
    assert all(e.question and e.answer for e in examples)
    assert len({e.id for e in examples}) == len(examples)
    assert task.prompt(examples[0]).endswith("\n" + PROMPT_SUFFIX)
    assert task.use_chat_template and not task.split(RL_TRAIN) and not task.split(TEST_HARD)


@needs_data
def test_gsm8k_train_feeds_rl_and_sft_with_the_readme_row_count() -> None:
    task = MathTask(MathTaskConfig(train_path=str(DATA / "gsm8k/train.jsonl")))
    assert len(task.split(RL_TRAIN)) == 7473
    assert len(task.split(SFT_TRAIN)) == 7473


@needs_data
@needs_math_verify
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_gold_answers_grade_themselves(name: str) -> None:
    task = benchmark_task(name, DATA)
    examples = task.split(TEST)
    sample = random.Random(0).sample(examples, min(40, len(examples)))
    failures = [e.answer for e in sample if task.grade(e, f"Reasoning...\n\\boxed{{{e.answer}}}") != 1.0]
    assert not failures


@needs_data
def test_field_mapping_per_source() -> None:
    olympiad = benchmark_task("olympiadbench", DATA).split(TEST)
    multi = next(e for e in olympiad if e.meta.get("is_multiple_answer") and "69" in e.answer)
    assert multi.answer == "69,84"  # the list ["$69$,$84$"] joined, $ stripped
    assert all("$" not in e.answer.replace("\\$", "") for e in olympiad)
    assert all(e.solution and "\\boxed" in e.solution for e in olympiad)
    minerva = benchmark_task("minerva_math", DATA).split(TEST)
    assert minerva[0].answer == "1.6"  # the boxed part of the solution
    amc = benchmark_task("amc23", DATA).split(TEST)
    assert amc[0].answer == "27" and amc[0].solution is None  # 27.0 in the file
    aime = benchmark_task("aime24", DATA).split(TEST)
    assert aime[0].answer == "204" and aime[0].question.startswith("Every morning Aya")
    math500 = benchmark_task("math500", DATA).split(TEST)
    assert math500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)" and math500[0].meta["subject"] == "Precalculus"


@needs_data
def test_gsm8k_solutions_end_in_the_boxed_gold_answer() -> None:
    task = build_task(TaskConfig(name="gsm8k"), data_root=str(DATA))
    assert task.name == "gsm8k" and len(task.split(TEST)) == 1319
    for example in task.split(SFT_TRAIN)[:500]:
        assert example.solution.endswith(f"\\boxed{{{example.answer}}}.")
        assert "<<" not in example.solution and "####" not in example.solution
        assert "," not in example.answer


@needs_data
@needs_math_verify
def test_gsm8k_expert_solutions_grade_correct() -> None:
    task = benchmark_task("gsm8k", DATA, limit=50)
    assert len(task.split(TEST)) == 50
    assert all(task.grade(e, e.solution) == 1.0 for e in task.split(TEST))


def test_gsm8k_solution_conversion() -> None:
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all 48+24 = <<48+24=72>>72.\n#### 1,072"
    solution, answer = gsm8k_solution(text)
    assert answer == "1072"
    assert solution == "Natalia sold 48/2 = 24 clips in May.\nIn all 48+24 = 72.\nThe final answer is \\boxed{1072}."


def test_clean_answer() -> None:
    assert clean_answer(27.0) == "27" and clean_answer(2.5) == "2.5" and clean_answer(7) == "7"
    assert clean_answer(["$69$,$84$"]) == "69,84"
    assert clean_answer(["$\\frac{1}{2}$", "$3$"]) == "\\frac{1}{2}, 3"
    assert clean_answer("\\$18.90") == "\\$18.90"  # an escaped dollar is content, not a delimiter
    assert clean_answer("1,080") == "1080" and clean_answer("1,3") == "1,3"


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_broken_json_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"problem": "1+1?", "answer": "2"}, '{"problem": "2+2?", "answer": ', {"problem": "x", "answer": "1"}])
    with pytest.raises(TaskError, match=r"bad\.jsonl line 2: not valid JSON"):
        MathTask(MathTaskConfig(test_path=str(path)))


def test_row_without_question_or_answer_names_the_line(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "q.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "", "answer": "4"}])
    with pytest.raises(TaskError, match=r"q\.jsonl line 2: no question in field 'problem'") as info:
        MathTask(MathTaskConfig(test_path=str(path)))
    assert "\n" not in str(info.value)
    path = _write_jsonl(tmp_path / "a.jsonl", [{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}])
    with pytest.raises(TaskError, match=r"a\.jsonl line 2: no answer in field 'answer'"):
        MathTask(MathTaskConfig(train_path=str(path)))
    path = _write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    with pytest.raises(TaskError, match=r"line 1: expected a JSON object"):
        MathTask(MathTaskConfig(train_path=str(path)))


def test_missing_columns_and_files_are_clear_errors(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "cols.jsonl", [{"text": "1+1?", "label": "2"}])
    with pytest.raises(TaskError, match=r"no question column .*columns: label, text.*question_field"):
        MathTask(MathTaskConfig(train_path=str(path)))
    with pytest.raises(TaskError, match=r"not found"):
        MathTask(MathTaskConfig(train_path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(TaskError, match=r"no data"):
        MathTask(MathTaskConfig())
    with pytest.raises(TaskError, match=r"unknown benchmark"):
        benchmark_task("mmlu", tmp_path)
    with pytest.raises(TaskError, match=r"benchmark file .* not found"):
        benchmark_task("aime24", tmp_path)


def test_column_mapping_overrides(tmp_path: Path) -> None:
    rows = [{"text": "What is 1+1?", "label": 2, "steps": "1+1=2"}, {"text": "What is 2+3?", "label": 5, "steps": "2+3=5"}]
    path = _write_jsonl(tmp_path / "custom.jsonl", rows)
    cfg = MathTaskConfig(train_path=str(path), question_field="text", answer_field="label", solution_field="steps")
    task = MathTask(cfg)
    first = task.split(RL_TRAIN)[0]
    assert (first.question, first.answer) == ("What is 1+1?", "2")
    assert first.solution == "1+1=2\n\nThe final answer is \\boxed{2}."  # a box is appended
    assert len(task.split(SFT_TRAIN)) == 2
    # an explicit field wins over auto-detection: here the answer comes from "alt", not "answer"
    path = _write_jsonl(tmp_path / "alt.jsonl", [{"problem": "p", "answer": "wrong", "alt": "right"}])
    assert MathTask(MathTaskConfig(test_path=str(path), answer_field="alt")).split(TEST)[0].answer == "right"


def test_minerva_style_answer_from_the_boxed_solution(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "solution": "so $x=\\boxed{\\frac{1}{2}}$ cm"}, {"problem": "q", "solution": "no box"}])
    with pytest.raises(TaskError, match=r"m\.jsonl line 2: no \\boxed\{\} answer"):
        MathTask(MathTaskConfig(test_path=str(path)))
    task = MathTask(MathTaskConfig(test_path=str(path), limit=1))
    assert task.split(TEST)[0].answer == "\\frac{1}{2}"


def test_json_array_files_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "arr.json"
    path.write_text(json.dumps([{"question": f"q{i}", "answer": str(i)} for i in range(10)]))
    task = MathTask(MathTaskConfig(train_path=str(path), test_path=str(path), limit=3))
    assert [e.answer for e in task.split(RL_TRAIN)] == ["0", "1", "2"]
    assert task.split(SFT_TRAIN) == []  # no solution column
    assert task.split(VAL) == []  # no val_path: no val split
    val = MathTask(MathTaskConfig(test_path=str(path), val_path=str(path), limit=2)).split(VAL)
    assert [(e.question, e.answer) for e in val] == [("q0", "0"), ("q1", "1")]


def test_parquet_loading(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    import pyarrow.parquet as pq

    table = pa.table({
        "problem": ["What is 1+1?", "What is 3*3?"],
        "solution": ["1+1=2, so \\boxed{2}", "3*3=9, so \\boxed{9}"],
        "answer": ["2", "9"],
        "level": [1, 2],
    })
    path = tmp_path / "train.parquet"
    pq.write_table(table, path)
    task = MathTask(MathTaskConfig(train_path=str(path), test_path=str(path)))
    assert [e.answer for e in task.split(RL_TRAIN)] == ["2", "9"]
    assert task.split(SFT_TRAIN)[1].solution == "3*3=9, so \\boxed{9}"
    assert task.split(TEST)[0].meta["level"] == 1
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(TaskError, match=r"broken\.parquet: not a readable Parquet file"):
        MathTask(MathTaskConfig(test_path=str(tmp_path / "broken.parquet")))


def test_hub_ids_go_through_datasets(monkeypatch) -> None:
    datasets = pytest.importorskip("datasets", reason="datasets is not installed")
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "#### 4"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    task = MathTask(MathTaskConfig(train_path="openai/gsm8k:main", test_path="openai/gsm8k:main@test", hard_path="org/hard", limit=1))
    assert calls == [("openai/gsm8k", "main", "train"), ("openai/gsm8k", "main", "test"), ("org/hard", None, "test")]
    assert task.split(RL_TRAIN)[0].answer == "2" and len(task.split(TEST)) == 1

    def offline(name, config=None, split=None):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(TaskError, match=r"could not load hub dataset 'org/x'.*ConnectionError"):
        MathTask(MathTaskConfig(test_path="org/x"))


def test_task_registry_is_a_plain_dict() -> None:
    assert set(TASKS) == {"arith", "math", "gsm8k", "gym", "user"}
    with pytest.raises(TaskError, match="unknown task"):
        build_task(TaskConfig(name="nope"))


def test_a_gold_no_answer_can_match_is_refused_with_file_line_and_column(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "g.jsonl", [{"problem": "p", "answer": "\\frac{1}{2}"}, {"problem": "q", "answer": "\\frac{"}])
    with pytest.raises(TaskError) as info:
        MathTask(MathTaskConfig(train_path=str(path)))
    assert str(info.value) == (f"{path} line 2: gold answer '\\\\frac{{' (column 'answer') can never be graded right: "
                               "its braces do not balance; fix or drop the row")
    path = _write_jsonl(tmp_path / "m.jsonl", [{"problem": "p", "solution": "so \\boxed{\\text{ }}"}])
    with pytest.raises(TaskError, match=r"m\.jsonl line 1: gold answer .*\(column 'solution'\).*nothing is left"):
        MathTask(MathTaskConfig(test_path=str(path)))
    pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": ["p", "q"], "answer": ["2", "}{"]}), tmp_path / "g.parquet")
    with pytest.raises(TaskError, match=r"g\.parquet row index 1: gold answer '\}\{'"):
        MathTask(MathTaskConfig(test_path=str(tmp_path / "g.parquet")))


def test_an_empty_file_is_refused_naming_the_file_and_the_setting(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TaskError) as info:
        MathTask(MathTaskConfig(train_path=str(empty)))
    assert str(info.value) == (f"{empty}: no problems to read (it has no rows); "
                               "point task.math.train_path at a file with one problem per row")
    (tmp_path / "empty.json").write_text("[]")
    rows = _write_jsonl(tmp_path / "rows.jsonl", [{"problem": "p", "answer": "1"}])
    with pytest.raises(TaskError, match=r"empty\.json: no problems .*task\.math\.val_path"):
        MathTask(MathTaskConfig(test_path=str(rows), val_path=str(tmp_path / "empty.json")))
    with pytest.raises(TaskError, match=r"rows\.jsonl: no problems to read \(task\.math\.limit=0 keeps none"):
        MathTask(MathTaskConfig(test_path=str(rows), limit=0))


def test_a_named_column_missing_from_the_file_names_the_file_the_column_and_the_columns_present(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "cols.jsonl", [{"text": "1+1?", "label": "2", "steps": "1+1=2"}])
    for key, column in (("question_field", "txt"), ("answer_field", "lbl")):
        with pytest.raises(TaskError) as info:
            MathTask(MathTaskConfig(test_path=str(path), **{"question_field": "text", key: column}))
        assert str(info.value) == f"{path}: no column {column!r} (task.math.{key}); columns: label, steps, text"
    cfg = dict(question_field="text", answer_field="label", solution_field="stps")
    with pytest.raises(TaskError, match=r"cols\.jsonl: no column 'stps' \(task\.math\.solution_field\); columns: label"):
        MathTask(MathTaskConfig(train_path=str(path), **cfg))
    # test files need no solutions: the same setting is no error there
    assert MathTask(MathTaskConfig(test_path=str(path), **cfg)).split(TEST)[0].solution is None


def test_data_hint_names_the_train_file_and_its_solution_column(tmp_path: Path) -> None:
    from bridgerl.tasks.base import Task

    assert Task().data_hint(SFT_TRAIN) == ""
    bare = _write_jsonl(tmp_path / "bare.jsonl", [{"question": "1+1?", "answer": "2"}])
    task = MathTask(MathTaskConfig(train_path=str(bare)))
    assert task.split(SFT_TRAIN) == []
    assert task.data_hint(SFT_TRAIN) == (f"{bare} has no solution column (looked for solution, solutions, reasoning, "
                                         "rationale, cot; columns: answer, question); set task.math.solution_field")
    some = _write_jsonl(tmp_path / "some.jsonl", [{"question": "1+1?", "answer": "2", "solution": "1+1=2"},
                                                 {"question": "2+2?", "answer": "4", "solution": ""}])
    hint = MathTask(MathTaskConfig(train_path=str(some))).data_hint(RL_TRAIN)
    assert hint.startswith(f"{some}: 1 of 2 rows have no solution in column 'solution' (first: line 2)")
    assert MathTask(MathTaskConfig(test_path=str(some))).data_hint(RL_TRAIN) == "no task.math.train_path is set"


@needs_data
def test_data_hint_of_gsm8k_names_the_answer_column_its_solutions_come_from() -> None:
    task = MathTask(MathTaskConfig(train_path=str(DATA / "gsm8k/train.jsonl"), limit=3))
    assert task.data_hint(SFT_TRAIN).endswith("(question column 'question', answer column 'answer', solution column 'answer')")
