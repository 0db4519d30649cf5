"""The examples in examples/ run as a user would run them (from the repository root), each in ~10-30 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, **env):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_notebook_style_script_trains_on_user_data_with_user_rewards(tmp_path):
    out = _run(["examples/quickstart.py"], tmp_path, OUTPUT_DIR=str(tmp_path)).stdout
    assert "test accuracy" in out and "rl_train accuracy" in out
    summary = json.loads((tmp_path / "quickstart" / "summary.json").read_text())
    assert summary["steps"] == 4 and "correct" in (tmp_path / "quickstart" / "config.yaml").read_text()


def test_the_yaml_example_trains_through_the_cli_with_rewards_from_a_file(tmp_path):
    _run(["-m", "bridgerl", "train", "examples/user_task.yaml", f"run.output_dir={tmp_path}"], tmp_path)
    run = tmp_path / "user-task"
    assert json.loads((run / "summary.json").read_text())["steps"] == 4
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["reward"] <= 1.1 for r in rows if "reward" in r)  # weights 1.0 + 0.1
