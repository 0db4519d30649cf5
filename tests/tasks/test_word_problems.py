"""Word-problem sets in their published shapes: problems split over columns, golds with unit notes.

Rows are written here in the shapes SVAMP (`Body`, `Question`, float `Answer`) and ASDiv (`body`,
`question`, `answer` like "9 (apples)") are published in; the text is made up.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridgerl.config import MathTaskConfig
from bridgerl.config_load import load_config
from bridgerl.tasks import build_task
from bridgerl.tasks.base import TEST, TaskError
from bridgerl.tasks.math import MathTask, template_fields

pytest.importorskip("math_verify", reason="math-verify is not installed (pip install math-verify)")

SVAMP_ROWS = [
    {"ID": "chal-1", "Body": "A box holds 4 red pens and 5 blue pens.", "Question": "How many pens are in the box?",
     "Equation": "( 4.0 + 5.0 )", "Answer": 9.0, "Type": "Addition"},
    {"ID": "chal-2", "Body": "Sam had 150 stickers. He gave 5 to his sister", "Question": "How many stickers are left?",
     "Equation": "( 150.0 - 5.0 )", "Answer": "145.0", "Type": "Subtraction"},
]
ASDIV_ROWS = [
    {"body": "Ann picked 4 apples and Ben picked 5 apples.", "question": "How many apples did they pick?",
     "solution_type": "Addition", "answer": "9 (apples)", "formula": "4+5=9"},
    {"body": "A ribbon is 3 meters long. It is cut into 6 equal pieces.", "question": "How long is each piece?",
     "solution_type": "Division", "answer": "0.5 (meters)", "formula": "3/6=0.5"},
    {"body": "A book costs 1,250 dollars and a pen 2 dollars.", "question": "How much do both cost?",
     "solution_type": "Addition", "answer": "1,252 (dollars)", "formula": "1250+2=1252"},
]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_body_and_question_columns_without_a_template_are_refused_with_the_template_to_use(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "svamp.jsonl", SVAMP_ROWS)
    with pytest.raises(TaskError) as info:
        MathTask(MathTaskConfig(test_path=str(path)))
    message = str(info.value)
    assert "\n" not in message and "svamp.jsonl" in message
    assert 'task.math.question_template="{Body} {Question}"' in message
    path = _write_jsonl(tmp_path / "asdiv.jsonl", ASDIV_ROWS)
    with pytest.raises(TaskError, match=r'asdiv\.jsonl: .*question_template="\{body\} \{question\}"'):
        MathTask(MathTaskConfig(test_path=str(path)))
    # asking for the question alone is a choice, not a silent default
    alone = MathTask(MathTaskConfig(test_path=str(path), question_field="question")).split(TEST)
    assert alone[0].question == "How many apples did they pick?"
    # a body-like column that is empty in every row (OlympiadBench's text-only `context`) is no reason to refuse
    rows = [{"context": None, "question": "What is 2+2?", "final_answer": ["$4$"]}]
    assert MathTask(MathTaskConfig(test_path=str(_write_jsonl(tmp_path / "ob.jsonl", rows)))).split(TEST)[0].answer == "4"


def test_svamp_shaped_rows_with_a_template_prompt_the_whole_problem_and_float_golds_match_integers(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "svamp.jsonl", SVAMP_ROWS)
    task = MathTask(MathTaskConfig(test_path=str(path), question_template="{Body} {Question}"))
    first, second = task.split(TEST)
    assert first.question == "A box holds 4 red pens and 5 blue pens. How many pens are in the box?"
    assert "He gave 5 to his sister How many stickers" in task.prompt(second)
    assert first.answer == "9" and second.answer == "145.0"  # 9.0 read as a number, "145.0" as text
    assert task.grade(first, "So \\boxed{9}") == 1.0 and task.grade(second, "So \\boxed{145}") == 1.0
    assert task.grade(second, "\\boxed{145.00}") == 1.0 and task.grade(second, "\\boxed{144}") == 0.0
    assert "Body" not in first.meta and first.meta["Equation"] == "( 4.0 + 5.0 )"  # unused columns stay as meta


def test_asdiv_shaped_golds_with_unit_notes_are_graded_as_numbers(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "asdiv.jsonl", ASDIV_ROWS)
    task = MathTask(MathTaskConfig(test_path=str(path), question_template="{body} {question}"))
    apples, ribbon, book = task.split(TEST)
    assert [apples.answer, ribbon.answer, book.answer] == ["9", "0.5", "1252"]
    assert task.prompt(apples).startswith("Ann picked 4 apples and Ben picked 5 apples. How many apples did they pick?\n")
    assert task.grade(apples, "\\boxed{9}") == 1.0 and task.grade(apples, "\\boxed{9 apples}") == 1.0
    assert task.grade(apples, "\\boxed{8}") == 0.0
    assert task.grade(ribbon, "\\boxed{\\frac{1}{2}}") == 1.0 and task.grade(book, "\\boxed{1,252}") == 1.0
    assert task.grade(book, "\\boxed{1250}") == 0.0


def test_acceptance_body_question_and_a_unit_gold_from_yaml_and_from_overrides(tmp_path: Path) -> None:
    data = _write_jsonl(tmp_path / "wp.jsonl", [{"Body": "There are 9 apples in a basket.",
                                                 "Question": "How many apples are in the basket?",
                                                 "Answer": "9 (apples)"}])
    yaml_file = tmp_path / "wp.yaml"
    yaml_file.write_text(f'task:\n  name: math\n  math:\n    test_path: {data}\n    question_template: "{{Body}} {{Question}}"\n')
    from_yaml = load_config(yaml_file)
    from_overrides = load_config(None, ["task.name=math", f"task.math.test_path={data}",
                                        "task.math.question_template={Body} {Question}"])
    for cfg in (from_yaml, from_overrides):
        assert cfg.task.math.question_template == "{Body} {Question}"
        task = build_task(cfg.task)
        (example,) = task.split(TEST)
        assert task.prompt(example).startswith("There are 9 apples in a basket. How many apples are in the basket?")
        assert task.grade(example, "The basket holds 9 apples.\n\\boxed{9}") == 1.0


def test_a_template_naming_a_missing_column_names_the_file_and_the_columns_present(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "svamp.jsonl", SVAMP_ROWS)
    with pytest.raises(TaskError) as info:
        MathTask(MathTaskConfig(test_path=str(path), question_template="{Bdy} {Question}"))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: no column 'Bdy' (named in task.math.question_template=")
    assert message.endswith("columns: Answer, Body, Equation, ID, Question, Type")


@pytest.mark.parametrize("template", ["{Body", "{} {Question}", "{0}", "{Body.text}", "{Body!r}", "no columns"])
def test_a_malformed_template_is_one_line_saying_how_to_write_one(template: str) -> None:
    with pytest.raises(TaskError, match=r"^task\.math\.question_template=.*e\.g\. '\{Body\} \{Question\}'") as info:
        template_fields(template)
    assert "\n" not in str(info.value)


def test_template_rows_with_gaps_and_conflicting_settings(tmp_path: Path) -> None:
    rows = [{"context": None, "question": "What is 2+2?", "answer": "4"},
            {"context": "A car goes 60 km in 1 hour.", "question": "How fast is it?", "answer": "60 km/h"}]
    path = _write_jsonl(tmp_path / "ctx.jsonl", rows)
    task = MathTask(MathTaskConfig(test_path=str(path), question_template="{context}\n{question}"))
    plain, car = task.split(TEST)
    assert plain.question == "What is 2+2?"  # a null value renders as nothing, not "None"
    assert car.question == "A car goes 60 km in 1 hour.\nHow fast is it?" and car.answer == "60"
    with pytest.raises(TaskError, match=r"question_template and task\.math\.question_field are both set"):
        MathTask(MathTaskConfig(test_path=str(path), question_template="{question}", question_field="question"))
    path = _write_jsonl(tmp_path / "blank.jsonl", [{"Body": "", "Question": " ", "Answer": 1}])
    with pytest.raises(TaskError, match=r"blank\.jsonl line 1: task\.math\.question_template=.* gives an empty question"):
        MathTask(MathTaskConfig(test_path=str(path), question_template="{Body} {Question}"))


def test_column_names_are_matched_in_any_case(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "caps.jsonl", [{"Problem": "What is 3*3?", "Answer": "9 (squares)"}])
    (example,) = MathTask(MathTaskConfig(test_path=str(path))).split(TEST)
    assert (example.question, example.answer) == ("What is 3*3?", "9")
