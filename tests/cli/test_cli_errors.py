"""Bad user input: one clear line on stderr, exit code 2, and no run directory left behind."""

from __future__ import annotations

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
