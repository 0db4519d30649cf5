"""Math data files from the command line. One that cannot work is refused before anything is
written: one line naming the file (and its line or column), exit code 2, from `bridgerl train` and
`bridgerl eval` alike. A word-problem file split over columns evaluates with its whole problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path



def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bridgerl", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)


def _train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return _cli(tmp_path, "train", "task.name=math", *args, f"run.output_dir={tmp_path / 'runs'}", "train.steps=1")


def _one_line_exit_2(proc: subprocess.CompletedProcess, tmp_path: Path, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_train_refuses_a_gold_no_answer_can_match(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", [{"question": "1+1?", "answer": "2", "solution": "\\boxed{2}"},
                                             {"question": "half?", "answer": "\\frac{", "solution": "\\boxed{1}"}])
    proc = _train(tmp_path, f"task.math.train_path={data}", f"task.math.test_path={data}")
    _one_line_exit_2(proc, tmp_path, f"{data} line 2: gold answer", "column 'answer'", "braces do not balance")


def test_train_refuses_an_empty_file(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text("")
    proc = _train(tmp_path, f"task.math.train_path={data}")
    _one_line_exit_2(proc, tmp_path, f"{data}: no problems to read", "task.math.train_path")


def test_train_refuses_a_named_column_the_file_lacks(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "train.jsonl", [{"question": "1+1?", "answer": "2"}])
    proc = _train(tmp_path, f"task.math.train_path={data}", "task.math.answer_field=label")
    _one_line_exit_2(proc, tmp_path, f"{data}: no column 'label' (task.math.answer_field); columns: answer, question")


def test_eval_refuses_a_problem_split_over_columns_and_suggests_the_template(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "test.jsonl", [{"Body": "There are 9 apples in a basket.",
                                             "Question": "How many apples are in the basket?", "Answer": "9 (apples)"}])
    proc = _cli(tmp_path, "eval", "embedded", "task.name=math", f"task.math.test_path={data}")
    _one_line_exit_2(proc, tmp_path, str(data), 'task.math.question_template="{Body} {Question}"')
    proc = _cli(tmp_path, "eval", "embedded", "task.name=math", f"task.math.test_path={data}",
                "task.math.question_template={Body} {Qestion}")
    _one_line_exit_2(proc, tmp_path, f"{data}: no column 'Qestion'", "columns: Answer, Body, Question")


def test_train_names_the_file_and_column_when_a_recipe_needs_solutions_it_lacks(tmp_path: Path) -> None:
    # This check runs after the model is loaded, so transformers' "Loading weights" bars may precede
    # the error line until they are silenced (issue 14, item 5): the error is the last line.
    def refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = [line for line in proc.stderr.splitlines() if line.strip()][-1]
        assert all(needle in last for needle in needles), last
        assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())

    data = _jsonl(tmp_path / "train.jsonl", [{"question": "1+1?", "answer": "2"}])
    refused(_train(tmp_path, "recipe=sft", f"task.math.train_path={data}"),
            "empty sft_train split", f"{data} has no solution column", "task.math.solution_field")
    refused(_train(tmp_path, "recipe=grpo", f"task.math.test_path={data}"), "empty rl_train split",
            "no task.math.train_path is set")
    partial = _jsonl(tmp_path / "partial.jsonl", [{"question": "1+1?", "answer": "2", "solution": "1+1=2"},
                                                  {"question": "2+2?", "answer": "4"}])
    refused(_train(tmp_path, "recipe=luffy", f"task.math.train_path={partial}"),
            f"{partial}: 1 of 2 rows have no solution in column 'solution' (first: line 2)")


def test_eval_of_a_word_problem_file_prompts_body_and_question_and_keeps_the_bare_gold(tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "test.jsonl", [{"Body": "There are 9 apples in a basket.",
                                             "Question": "How many apples are in the basket?", "Answer": "9 (apples)"}])
    out = tmp_path / "out.jsonl"
    proc = _cli(tmp_path, "eval", "embedded", "task.name=math", f"task.math.test_path={data}",
                "task.math.question_template={Body} {Question}", "--max-new-tokens", "4", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert "There are 9 apples in a basket. How many apples are in the basket?" in record["prompt"]
    assert record["answer"] == "9"
