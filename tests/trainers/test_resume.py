"""Exact resume: a run killed with SIGKILL (also while writing a checkpoint), or stopped with
SIGINT / SIGTERM, and resumed with resume=true ends with the same metrics and the same final weights
as an uninterrupted run, on one process and on two (weights replicated, or sharded with FSDP2
through the shipped accelerate configs)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from safetensors.torch import load_file

from bridgerl.models.tiny import build_model, build_tokenizer

pytestmark = pytest.mark.slow

COMMON = ["recipe=bridge", "train.steps=12", "train.save_every=2", "train.keep_last=2", "rollout.prompts_per_step=2",
          "rollout.num_generations=3", "rollout.max_new_tokens=10", "train.sft_batch_size=4", "eval.every=4",
          "task.arith.n_test=8", "task.arith.n_test_hard=4", "log.progress=false", "log.tensorboard=false",
          "lora.r=4"]
TIME_KEYS = ("time", "step_time")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tok = build_tokenizer()
    build_model(tok, seed=3).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _cmd(tmp_path, model_dir, name, *extra):
    return [sys.executable, "-m", "bridgerl", "train", *COMMON, f"model.name_or_path={model_dir}",
            f"run.output_dir={tmp_path}", f"run.name={name}", *extra]


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIME_KEYS)} for r in rows]


def _assert_same_run(a, b, steps=12):
    assert _metrics(a) == _metrics(b)
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert (wa[k] == wb[k]).all(), k
    sa, sb = json.loads((a / "summary.json").read_text()), json.loads((b / "summary.json").read_text())
    assert sa["eval/accuracy"] == sb["eval/accuracy"] and sa["steps"] == sb["steps"] == steps


def _kill_after_checkpoint(cmd, ckpt_dir, env):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while not (ckpt_dir / "step-2").is_dir():
        assert proc.poll() is None, "run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.05)
    # A launcher's workers live in process groups of their own (torch elastic), so a kill of the
    # launcher alone leaves them training: kill every process of the run at once.
    launcher = psutil.Process(proc.pid)
    run = [*launcher.children(recursive=True), launcher]
    for p in run:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    assert not psutil.wait_procs(run, timeout=30)[1], "a process of the killed run survived"
    assert not (ckpt_dir.parent / "summary.json").exists(), "the run finished before it was killed"


@pytest.fixture(scope="module")
def full(tmp_path_factory, model_dir):
    """The uninterrupted run every single-process test compares with."""
    out = tmp_path_factory.mktemp("full")
    subprocess.run(_cmd(out, model_dir, "full"), check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   capture_output=True)
    return out / "full"


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, model_dir, full):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    _kill_after_checkpoint(_cmd(tmp_path, model_dir, "killed"), tmp_path / "killed" / "checkpoints", env)
    subprocess.run(_cmd(tmp_path, model_dir, "killed", "resume=true"), check=True, env=env, capture_output=True)
    _assert_same_run(full, tmp_path / "killed")
    assert len(list((tmp_path / "killed" / "checkpoints").glob("step-*"))) <= 2  # keep_last


def test_a_lean_shadow_run_killed_and_resumed_equals_the_uninterrupted_run_without_it(tmp_path, model_dir, full):
    """bridge.lean_shadow: thetahat's moments go through the checkpoint from their file and back."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lean = _cmd(tmp_path, model_dir, "lean", "bridge.lean_shadow=true")
    _kill_after_checkpoint(lean, tmp_path / "lean" / "checkpoints", env)
    subprocess.run([*lean, "resume=true"], check=True, env=env, capture_output=True)
    _assert_same_run(full, tmp_path / "lean")


def test_checkpoint_killed_mid_write_is_ignored_on_resume(tmp_path, model_dir, full):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpts = tmp_path / "torn" / "checkpoints"
    _kill_after_checkpoint(_cmd(tmp_path, model_dir, "torn"), ckpts, env)
    # What a SIGKILL during save_checkpoint leaves: a temporary folder with truncated files.
    latest = sorted(ckpts.glob("step-*"), key=lambda p: int(p.name[5:]))[-1]
    torn = ckpts / f".tmp-step-{int(latest.name[5:]) + 2}-12345"
    shutil.copytree(latest, torn)
    (torn / "trainer_state.pt").write_bytes((torn / "trainer_state.pt").read_bytes()[:100])
    subprocess.run(_cmd(tmp_path, model_dir, "torn", "resume=true"), check=True, env=env, capture_output=True)
    assert not torn.exists()
    _assert_same_run(full, tmp_path / "torn")


def _signal_mid_run(cmd, run, env, sig):
    """Start a run, send `sig` once it has logged two steps, wait; (exit code, stderr lines)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    metrics, deadline = run / "metrics.jsonl", time.time() + 300
    while not metrics.is_file() or len(metrics.read_text().splitlines()) < 3:  # the step-0 row + two steps
        assert proc.poll() is None, "run ended before it was signalled"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_the_last_step_and_the_printed_command_resumes_it_exactly(tmp_path, model_dir, full, sig,
                                                                                       code):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "cut"
    # no periodic checkpoints: whatever resumes was written because of the signal
    returncode, lines = _signal_mid_run(_cmd(tmp_path, model_dir, "cut", "train.save_every=0"), run, env, sig)
    assert returncode == code and not any("Traceback" in line for line in lines), lines
    # the start's two lines (folder, rates), then after the signal: one line
    assert lines[0] == f"run folder: {run} (new)" and lines[1].startswith("rates: ") and len(lines) == 3, lines
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 2 <= summary["steps"] < 12
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{summary['steps']}"]
    assert f"interrupted by {sig.name} after step {summary['steps']} of 12" in lines[-1]
    command = shlex.split(lines[-1].split("resume with: ", 1)[1])
    assert command[:2] == ["bridgerl", "train"] and command[-1] == "resume=true"
    subprocess.run([sys.executable, "-m", "bridgerl", *command[1:]], check=True, env=env, capture_output=True)
    _assert_same_run(full, run)


def test_long_runs_checkpoint_by_wall_clock(tmp_path, model_dir):
    from bridgerl.config_load import load_config
    from bridgerl.trainers.loop import train

    assert load_config().train.checkpoint_minutes > 0  # on by default
    args = [*COMMON, "recipe=sft", "train.steps=3", "train.save_every=0", "train.keep_last=5", "eval.every=0",
            f"model.name_or_path={model_dir}", f"run.output_dir={tmp_path}"]
    train(load_config(None, [*args, "run.name=often", "train.checkpoint_minutes=1e-9"]))  # due after every step
    assert sorted(p.name for p in (tmp_path / "often" / "checkpoints").iterdir()) == ["step-1", "step-2"]
    train(load_config(None, [*args, "run.name=never", "train.checkpoint_minutes=0"]))
    assert not (tmp_path / "never" / "checkpoints").exists()


@pytest.mark.parametrize("launch_config,checkpoint_file", [("ddp.yaml", "model.safetensors"), ("fsdp.yaml", "shard-1.pt")])
def test_two_process_run_killed_and_resumed_equals_uninterrupted_run(tmp_path, model_dir, launch_config,
                                                                     checkpoint_file):
    if shutil.which("accelerate") is None:
        pytest.skip("accelerate CLI not installed")
    # Every rank restores its own RNG state (each samples its own rollouts) and, sharded, its own shards.
    config = Path(__file__).resolve().parents[2] / "configs" / "accelerate" / launch_config
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    launch = ["accelerate", "launch", "--config_file", str(config), "--num_processes", "2",
              "--main_process_port", "29531", "-m", "bridgerl", "train"]

    def cmd(name, *extra):
        return [*launch, *COMMON, "train.steps=6", f"model.name_or_path={model_dir}", f"run.output_dir={tmp_path}",
                f"run.name={name}", *extra]

    subprocess.run(cmd("full"), check=True, env=env, capture_output=True)
    _kill_after_checkpoint(cmd("killed"), tmp_path / "killed" / "checkpoints", env)
    assert (tmp_path / "killed" / "checkpoints" / "step-2" / checkpoint_file).exists()
    subprocess.run(cmd("killed", "resume=true"), check=True, env=env, capture_output=True)
    _assert_same_run(tmp_path / "full", tmp_path / "killed", steps=6)
    shadow = load_file(str(tmp_path / "full" / "shadow" / "model.safetensors"))  # thetahat + w, whole
    assert shadow.keys() == load_file(str(tmp_path / "full" / "final" / "model.safetensors")).keys()
