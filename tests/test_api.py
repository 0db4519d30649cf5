"""The Python API: one config from every form, typed exceptions instead of exits, notebook progress."""

from __future__ import annotations

import importlib.util
import io

import pytest
from rich.console import Console
from rich.progress import Progress, TextColumn

import bridgerl
from bridgerl import Config, make_config
from bridgerl.config_load import dump_yaml
from bridgerl.utils.progress import LineProgress, progress_display


def test_a_config_is_the_same_from_defaults_a_dict_a_yaml_file_or_a_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("recipe: grpo\ntrain:\n  steps: 3\n")
    given = Config(recipe="grpo")
    forms = [
        make_config(recipe="grpo", train={"steps": 3}),
        make_config({"recipe": "grpo", "train.steps": 3}),
        make_config({"recipe": "grpo", "train": {"steps": 9}}, **{"train.steps": 3}),
        make_config(path),
        make_config(str(path), train={"steps": 3}),
        make_config(given, **{"train.steps": 3}),
    ]
    assert len({dump_yaml(c) for c in forms}) == 1 and forms[0].optim.lr == 1e-4  # grpo's own rate
    assert given.train.steps == 250 and given.optim.lr is None  # the caller's Config is left as it was


def test_python_objects_may_fill_the_task_and_the_run_yaml_names_them():
    def my_reward(completions, **kwargs):
        return [0.0] * len(completions)

    cfg = make_config(task={"name": "user", "reward_funcs": [my_reward], "user": {"train": [{"prompt": "x"}] * 3}})
    assert cfg.task.reward_funcs == [my_reward]
    text = dump_yaml(cfg)
    assert "test_api:test_python_objects_may_fill_the_task_and_the_run_yaml_names_them.<locals>.my_reward" in text
    assert "<3 rows given from Python>" in text


@pytest.mark.parametrize("config, error, message", [
    ({"optim.learning_rate": 1e-3}, bridgerl.ConfigError, "unknown config key 'optim.learning_rate'"),
    ({"task.reward_funcs": [3]}, bridgerl.ConfigError, "task.reward_funcs: give each as"),
    ({"task.reward_funcs": ["a:b", "c:d"], "task.reward_weights": [1.0]}, bridgerl.ConfigError,
     "task.reward_weights needs one weight per task.reward_funcs entry (2)"),
    ({"model.name_or_path": "/no/such/model"}, bridgerl.ModelLoadError, "not found"),
    (42, bridgerl.ConfigError, "a config is a bridgerl.Config, a dict or a YAML path, not a int"),
])
def test_user_errors_raise_typed_exceptions_and_never_exit(tmp_path, config, error, message):
    with pytest.raises(error) as exc:  # a SystemExit would fail this test, not pass it
        if isinstance(config, dict):
            bridgerl.train(config, run={"output_dir": str(tmp_path / "runs")})
        else:
            bridgerl.train(config)
    assert message in str(exc.value) and isinstance(exc.value, bridgerl.UserError)
    assert not (tmp_path / "runs").exists()


def test_compare_refuses_python_objects_it_cannot_hand_to_a_run():
    with pytest.raises(bridgerl.ConfigError, match="compare: task.reward_funcs holds a list"):
        bridgerl.compare({"task": {"reward_funcs": [print]}}, recipes=["sft"], steps=1)


def test_compare_from_python_returns_results_and_folder(tmp_path):
    result = bridgerl.compare({"run.output_dir": str(tmp_path), "log.progress": False, "log.tensorboard": False},
                              recipes=["sft"], seeds=1, steps=1, name="py", train={"sft_batch_size": 2},
                              task={"arith": {"n_test": 4, "n_test_hard": 2}}, rollout={"max_new_tokens": 8})
    assert result.compare_dir == (tmp_path / "compare-py").resolve() and (result.compare_dir / "report.md").is_file()
    assert [r["recipe"] for r in result.results["runs"]] == ["sft"]


def test_a_notebook_without_ipywidgets_gets_printed_progress_lines(capsys):
    notebook = Console(file=io.StringIO(), force_jupyter=True)
    display = progress_display([TextColumn("x")], notebook, label="grpo", disable=False)
    has_widgets = importlib.util.find_spec("ipywidgets") is not None
    assert isinstance(display, Progress if has_widgets else LineProgress)
    assert isinstance(progress_display([TextColumn("x")], Console(file=io.StringIO()), label="grpo", disable=False),
                      Progress)  # a terminal or a log file: rich's own bar
    lines = LineProgress("grpo", lines=4)
    with lines:
        bar = lines.add_task("train", total=8, info="")
        for step in range(8):
            lines.update(bar, advance=1, info=f"reward={step / 8:.3f}")
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["grpo", f"{n}/8"] for n in (2, 4, 6, 8)]
    assert out[-1].endswith("reward=0.875")
