"""Bad user input: one clear line on stderr, exit code 2, and no run directory left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _run(tmp_path, *args):
    cmd = [sys.executable, "-m", "bridgerl", "train", *args, f"run.output_dir={tmp_path / 'runs'}", "train.steps=1"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)


def _assert_clean_failure(proc, tmp_path, needle):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert needle in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unknown_key(tmp_path):
    _assert_clean_failure(_run(tmp_path, "optim.learning_rate=1e-3"), tmp_path, "unknown config key 'optim.learning_rate'")


def test_bad_value(tmp_path):
    _assert_clean_failure(_run(tmp_path, "recipe=ppo"), tmp_path, "recipe='ppo' is not allowed")


def test_malformed_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: grpo\n  train: [\n")
    _assert_clean_failure(_run(tmp_path, str(bad)), tmp_path, "is not valid YAML")


def test_missing_model_path(tmp_path):
    _assert_clean_failure(_run(tmp_path, f"model.name_or_path={tmp_path / 'no-such-model'}"), tmp_path, "not found")


def test_dataset_file_with_a_broken_row(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "1+1?", "answer": "2", "solution": "1+1=2. \\\\boxed{2}"}\n{"question": "2+2?", \n')
    proc = _run(tmp_path, "task.name=math", f"task.math.train_path={data}", f"task.math.test_path={data}")
    _assert_clean_failure(proc, tmp_path, "line 2")


def test_the_vllm_engine_without_vllm_installed(tmp_path):
    if __import__("importlib").util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    _assert_clean_failure(_run(tmp_path, "recipe=grpo", "rollout.engine=vllm"), tmp_path, "pip install bridgerl[vllm]")


def test_deepspeed_launch_is_refused_not_silently_replicated(tmp_path):
    # Under `accelerate launch` with a DeepSpeed config, accelerate sets ACCELERATE_USE_DEEPSPEED.
    cmd = [sys.executable, "-m", "bridgerl", "train", f"run.output_dir={tmp_path / 'runs'}", "train.steps=1"]
    env = {**os.environ, "ACCELERATE_USE_DEEPSPEED": "true"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    _assert_clean_failure(proc, tmp_path, "configs/accelerate/fsdp.yaml")


def test_overrides_may_follow_options(tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "bridgerl", *args], capture_output=True, text=True, cwd=tmp_path,
                              timeout=300)
    proc = cli("eval", "embedded", "--split", "val", "--limit", "4", "task.arith.n_val=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[val, n=3]" in proc.stdout  # the override after the options was applied
    proc = cli("eval", "embedded", "--limit", "4", "--bogus")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr


# -- the same contract in process (fast): exit 2, one line on stderr, the folder tree unchanged ----------

def _cli(capsys, *argv):
    from bridgerl.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def _tree(root):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _refused(capsys, tmp_path, argv, needle):
    before = _tree(tmp_path)
    code, lines = _cli(capsys, *argv)
    assert code == 2 and len(lines) == 1, lines
    assert needle in lines[0], lines[0]
    assert _tree(tmp_path) == before  # nothing half-written, nothing lost
    return lines[0]


def _train(tmp_path, *args):
    return ["train", f"run.output_dir={tmp_path / 'runs'}", "train.steps=1", "log.progress=false", *args]


@pytest.mark.parametrize("args, needle", [
    (["train.steps=abc"], "train.steps: expected int, got 'abc'"),  # a value of the wrong type
    (["bridge.lam=1.5"], "bridge.lam must be in (0, 1]"),  # a value out of its range
    (["train"], "override 'train' is not key=value"),  # an override without '='
    (["no-such.yaml"], "config file 'no-such.yaml' not found"),  # a config file that does not exist
], ids=["wrong-type", "out-of-range", "not-key-value", "config-file-missing"])
def test_config_mistakes_are_one_line(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, tmp_path, _train(tmp_path, *args), needle)


def test_config_file_that_is_not_a_mapping(capsys, tmp_path):
    (tmp_path / "list.yaml").write_text("- recipe: grpo\n")
    _refused(capsys, tmp_path, _train(tmp_path, tmp_path / "list.yaml"), "must hold a mapping of keys, not list")


def _fake_run(tmp_path, name, *overrides, status=None):
    """A run folder as train() leaves it: its config.yaml (and summary.json once it ended)."""
    from bridgerl.config_load import dump_yaml, load_config

    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(load_config(None, [*overrides, "train.steps=1"])))
    (run / "metrics.jsonl").write_text('{"step": 0}\n')
    if status:
        (run / "summary.json").write_text(json.dumps({"status": status}))
    return run


def test_existing_run_folder_is_never_replaced_without_run_overwrite(capsys, tmp_path):
    _fake_run(tmp_path, "done", status="ok")
    line = _refused(capsys, tmp_path, _train(tmp_path, "run.name=done"), "exists (a finished run)")
    assert "run.overwrite=true" in line
    _fake_run(tmp_path, "cut")  # no summary: an unfinished run is offered resume
    _refused(capsys, tmp_path, _train(tmp_path, "run.name=cut"), "continue it with resume=true")


def test_resume_with_settings_that_change_training_names_the_keys(capsys, tmp_path):
    _fake_run(tmp_path, "a", "optim.lr=0.003")
    line = _refused(capsys, tmp_path, _train(tmp_path, "run.name=a", "resume=true", "optim.lr=0.1", "bridge.lam=0.3",
                                             "eval.every=3", "log.tensorboard=false"),
                    "was trained with other settings (bridge.lam: 0.5 -> 0.3; optim.lr: 0.003 -> 0.1)")
    assert "eval.every" not in line and "log." not in line  # what does not change training may differ


def test_resume_of_a_finished_run_is_refused(capsys, tmp_path):
    _fake_run(tmp_path, "done", status="ok")
    _refused(capsys, tmp_path, _train(tmp_path, "run.name=done", "resume=true"), "already finished")


def test_resume_of_a_folder_that_is_no_run_is_refused(capsys, tmp_path):
    (tmp_path / "runs" / "photos").mkdir(parents=True)
    (tmp_path / "runs" / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    _refused(capsys, tmp_path, _train(tmp_path, "run.name=photos", "resume=true"), "not a bridgerl run")


def test_prompt_longer_than_the_context_names_split_example_and_lengths(capsys, tmp_path):
    data = tmp_path / "long.jsonl"
    rows = [{"id": "short", "question": "1+1?", "answer": "2", "solution": "1+1=2. \\boxed{2}"},
            {"id": "long", "question": "What is " + "1+" * 2000 + "1?", "answer": "2001", "solution": "\\boxed{2001}"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = _refused(capsys, tmp_path, _train(tmp_path, "task.name=math", f"task.math.train_path={data}",
                                             f"task.math.test_path={data}", "recipe=grpo"),
                    "split 'rl_train', example ")
    assert "exceeds the context of 'embedded' (128 tokens)" in line and "train.overlong=drop" in line


def test_generation_budget_beyond_the_context_is_refused(capsys, tmp_path):
    _refused(capsys, tmp_path, _train(tmp_path, "rollout.max_new_tokens=200"),
             "+ rollout.max_new_tokens (200) exceeds the context of 'embedded' (128 tokens)")


def test_recipe_without_the_data_it_needs(capsys, tmp_path):
    _refused(capsys, tmp_path, _train(tmp_path, "recipe=sft", "task.arith.n_sft_train=0"),
             "recipe=sft needs expert solutions but task 'arith' has an empty sft_train split")


@pytest.mark.parametrize("args, needle", [
    (["--k", "0"], "--k 0: must be >= 1"),
    (["--k", "4", "--temperature", "0"], "--temperature 0.0: sampling (--k > 1) needs a temperature > 0"),
    (["--limit", "0"], "--limit 0: must be >= 1"),
    (["--split", "training"], "--split 'training' is not a split; choose one of: rl_train"),
    (["--benchmark", "mmlu"], "unknown benchmark 'mmlu'"),
], ids=["k-below-1", "sampling-at-temperature-0", "limit-below-1", "unknown-split", "unknown-benchmark"])
def test_eval_options_that_cannot_work(capsys, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, tmp_path, ["eval", "embedded", *args, "--out", tmp_path / "c.jsonl"], needle)


@pytest.mark.parametrize("argv, needle", [
    (["trian"], "invalid choice: 'trian'"),
    (["eval", "embedded", "--kk", "2"], "unrecognized arguments: --kk 2"),
], ids=["unknown-command", "unknown-option"])
def test_usage_errors_are_one_line_naming_help(capsys, tmp_path, argv, needle):
    assert "--help" in _refused(capsys, tmp_path, argv, needle)


@pytest.mark.parametrize("args, needle", [
    (["--recipes", "ppo"], "unknown recipe(s) ppo; choose from"),  # the override after it is not a recipe
    (["--lr-sweep", "1e-3", "--seeds", "0"], "--seeds must be >= 1"),  # ... nor a rate
], ids=["unknown-recipe", "no-seeds"])
def test_compare_plans_that_cannot_work(capsys, tmp_path, args, needle):
    _refused(capsys, tmp_path, ["compare", *args, f"run.output_dir={tmp_path / 'runs'}"], needle)


def test_overrides_after_list_options_stay_overrides():
    from bridgerl.cli import overrides_first

    argv = ["compare", "my.yaml", "--recipes", "sft", "grpo", "train.steps=5", "--lr-sweep", "1e-3", "optim.lr=1"]
    assert overrides_first(argv) == ["compare", "my.yaml", "train.steps=5", "optim.lr=1", "--recipes", "sft", "grpo",
                                     "--lr-sweep", "1e-3"]
    assert overrides_first(["eval", "embedded", "--k", "2", "--out", "c.jsonl"]) == [
        "eval", "embedded", "--k", "2", "--out", "c.jsonl"]
    assert overrides_first(["--help"]) == ["--help"]
