"""Acceptance for user data and rewards: a reward function in the user's own file trains every recipe
through the CLI and through the Python API, and every bad input is one line and exit code 2 from the CLI
(a typed exception from Python) with no run folder left behind."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bridgerl
from bridgerl.cli import main
from bridgerl.config import RECIPES

REWARDS = '''
def correct(completions, answer, **kwargs):
    return [1.0 if c.split("#")[-1].strip() == a else 0.0 for c, a in zip(completions, answer)]

def raises(completions, answer, **kwargs):
    return [{"7": 1.0}[a] for a in answer]

def short(completions, **kwargs):
    return [1.0]

def nan(completions, **kwargs):
    return [float("nan")] * len(completions)

def needs_label(completions, label, **kwargs):
    return [0.0] * len(completions)

def raises_on_model_output(completions, solution, **kwargs):
    assert all(c == s for c, s in zip(completions, solution)), "not an expert solution"
    return [1.0] * len(completions)
'''
FAST = {"train.steps": 2, "rollout.prompts_per_step": 2, "rollout.num_generations": 2, "rollout.max_new_tokens": 12,
        "train.sft_batch_size": 2, "log.progress": False, "log.tensorboard": False, "lora.r": 4,
        "baseline.sft_steps": 1, "task.name": "user", "task.user.test_fraction": 0.25}


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A user's folder: rewards in their own file, a small JSONL dataset with expert solutions."""
    (tmp_path / "my_rewards.py").write_text(textwrap.dedent(REWARDS))
    rows = [{"prompt": f"Q:{a}+{b}=\nA:", "answer": str(a + b), "solution": f"{a}+{b}={a + b};#{a + b}"}
            for a, b in [(1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (5, 3), (2, 2), (7, 1)]]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "empty.jsonl").write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _settings(project: Path, reward: str = "correct", **extra) -> dict:
    return {**FAST, "task.user.train": "train.jsonl", "task.reward_funcs": [f"my_rewards.py:{reward}"],
            "run.output_dir": str(project / "runs"), **extra}


def _argv(settings: dict) -> list[str]:
    return ["train", *(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in settings.items())]


@pytest.mark.parametrize("surface", ["cli", "api"])
@pytest.mark.parametrize("recipe", RECIPES)
def test_a_reward_in_the_users_own_file_trains_every_recipe(project, recipe, surface):
    settings = _settings(project, recipe=recipe, **{"run.name": recipe})
    if surface == "cli":
        with pytest.raises(SystemExit) as exit_:
            main(_argv(settings))
        assert exit_.value.code == 0
        summary = json.loads((project / "runs" / recipe / "summary.json").read_text())
    else:
        result = bridgerl.train(settings)
        summary = result.summary
        assert result.run_dir == project / "runs" / recipe and (result.run_dir / "final" / "config.json").is_file()
    assert summary["steps"] == 2 and isinstance(summary["eval/accuracy"], float)
    rows = [json.loads(line) for line in (project / "runs" / recipe / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["reward"] for r in rows if "reward" in r]
    assert (recipe == "sft") == (not rewards) and all(0.0 <= r <= 1.0 for r in rewards)
    assert "my_rewards.py:correct" in (project / "runs" / recipe / "config.yaml").read_text()


BAD = [
    ({"task.reward_funcs": ["nowhere.py:correct"]}, bridgerl.RewardError, "file 'nowhere.py' not found"),
    ({"task.reward_funcs": ["my_rewards.py:missing"]}, bridgerl.RewardError, "has no 'missing'; its functions:"),
    ({"task.reward_funcs": ["my_rewards.py:raises"]}, bridgerl.RewardError,
     "reward function my_rewards.py:raises raised on example 'train.jsonl line "),
    ({"task.reward_funcs": ["my_rewards.py:short"]}, bridgerl.RewardError, "returned 1 values for 2 completions"),
    ({"task.reward_funcs": ["my_rewards.py:nan"]}, bridgerl.RewardError, "returned nan for example"),
    ({"task.reward_funcs": ["my_rewards.py:needs_label"]}, bridgerl.RewardError,
     "needs 'label', which the rl_train data has no column for; columns: answer, solution"),
    ({"task.user.train": "empty.jsonl"}, bridgerl.TaskError, "task.user.train (empty.jsonl) has no rows"),
    ({"task.user.test_fraction": 1.0}, bridgerl.ConfigError, "task.user.val_fraction and test_fraction"),
    ({"task.user.prompt_column": "question"}, bridgerl.TaskError,
     "task.user.prompt_column='question' is not a column of train.jsonl; columns: answer, prompt, solution"),
]


@pytest.mark.parametrize("surface", ["cli", "api"])
@pytest.mark.parametrize("bad, error, message", BAD, ids=[m.split(";")[0][:40] for _, _, m in BAD])
def test_bad_input_is_one_line_and_exit_2_or_a_typed_exception(project, capsys, surface, bad, error, message):
    settings = {**_settings(project), **bad}
    if surface == "cli":
        with pytest.raises(SystemExit) as exit_:
            main(_argv(settings))
        assert exit_.value.code == 2
        lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], lines
    else:
        with pytest.raises(error) as exc:
            bridgerl.train(settings)
        assert message in str(exc.value) and "\n" not in str(exc.value)
        assert isinstance(exc.value, bridgerl.UserError)
    assert not (project / "runs").exists()


def test_a_reward_that_raises_on_model_output_mid_run_leaves_no_run_folder(project, capsys):
    settings = _settings(project, "raises_on_model_output", recipe="grpo")  # passes the dry run on the solutions
    with pytest.raises(bridgerl.RewardError, match="raises_on_model_output raised on example .*AssertionError: not an"):
        bridgerl.train(settings)
    assert not (project / "runs").exists()  # nor the output folder the run created for itself
    proc = subprocess.run([sys.executable, "-m", "bridgerl", *_argv(settings)], capture_output=True, text=True)
    assert proc.returncode == 2 and "AssertionError: not an expert solution" in proc.stderr.strip().splitlines()[-1]
    assert not (project / "runs" / "default").exists()
    # run.overwrite=true replaced an old run by a new folder first: that half-written folder goes too
    (project / "runs" / "default").mkdir(parents=True)
    (project / "runs" / "default" / "old.txt").write_text("an earlier run")
    with pytest.raises(bridgerl.RewardError):
        bridgerl.train(settings, run={"overwrite": True})
    assert not (project / "runs" / "default").exists()
