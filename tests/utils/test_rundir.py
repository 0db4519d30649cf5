"""What a start may do with an existing run folder, and how a signal stops training."""

from __future__ import annotations

import json
import os
import signal

import pytest

from bridgerl.config import ConfigError
from bridgerl.config_load import dump_yaml, load_config, to_dict
from bridgerl.utils.interrupt import StopRequest
from bridgerl.utils.rundir import finished, plan_start, training_changes


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=r", *overrides])


def _run(tmp_path, *overrides, status=None):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text(dump_yaml(_cfg(tmp_path, *overrides)))
    if status:
        (run / "summary.json").write_text(json.dumps({"status": status}))
    return run


def test_a_new_name_starts_a_new_run_and_overwrite_is_opt_in(tmp_path):
    assert plan_start(_cfg(tmp_path)).action == "new"
    assert load_config().run.overwrite is False
    _run(tmp_path, status="ok")
    with pytest.raises(ConfigError, match="exists"):
        plan_start(_cfg(tmp_path))
    assert plan_start(_cfg(tmp_path, "run.overwrite=true")).action == "overwrite"


def test_resume_allows_changes_that_do_not_change_training(tmp_path):
    run = _run(tmp_path, "train.steps=12")
    same = _cfg(tmp_path, "train.steps=12", "resume=true", "eval.every=1", "eval.k=4", "log.progress=false",
                "train.save_every=3", "train.checkpoint_minutes=5", "train.max_minutes=10")
    assert plan_start(same).action == "restart"  # no checkpoint yet: that run starts again
    (run / "checkpoints" / "step-4").mkdir(parents=True)
    start = plan_start(same)
    assert start.action == "resume" and start.checkpoint == run / "checkpoints" / "step-4"


def test_training_changes_name_every_key_that_changes_training():
    saved = to_dict(load_config())
    changed = load_config(None, ["optim.lr=0.5", "rollout.num_generations=4", "run.seed=3", "log.progress=false"])
    assert training_changes(saved, changed) == ["optim.lr: 0.001 -> 0.5", "rollout.num_generations: 8 -> 4",
                                                "run.seed: 0 -> 3"]


def test_an_interrupted_run_is_unfinished_and_compare_resumes_it(tmp_path):
    from bridgerl.report.compare import PlannedRun, run_config

    run = _run(tmp_path, status="interrupted")
    assert not finished(run)
    pr = PlannedRun("bridge", "bridge", 0)
    pr.overrides = ["recipe=bridge"]
    (tmp_path / "bridge-s0").mkdir()
    (tmp_path / "bridge-s0" / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    assert run_config(None, [], pr, tmp_path).resume
    (tmp_path / "bridge-s0" / "summary.json").write_text(json.dumps({"status": "ok"}))
    assert not run_config(None, [], pr, tmp_path).resume


def test_first_signal_asks_to_stop_and_the_second_aborts():
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
