"""cold-start's second stage: GRPO from the SFT weights with fresh optimizer moments at its own rate."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import torch

from bridgerl.config import RECIPE_LR
from bridgerl.config_load import load_config
from bridgerl.trainers.phases import start_stage


def _adamw_and_cosine(lr: float):
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / 10)))
    return p, opt, sched


def test_a_new_stage_forgets_the_moments_and_takes_its_rate_on_the_same_schedule() -> None:
    p, opt, sched = _adamw_and_cosine(1e-3)
    for _ in range(4):
        p.grad = torch.ones(3)
        opt.step()
        sched.step()
    assert opt.state[p]["step"] == 4
    start_stage(SimpleNamespace(optimizers={"theta": opt}, schedulers={"theta": sched}), "theta", 1e-4)
    assert not opt.state
    factor = 0.5 * (1 + math.cos(math.pi * 4 / 10))
    assert math.isclose(opt.param_groups[0]["lr"], 1e-4 * factor)
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    assert opt.state[p]["step"] == 1  # a fresh AdamW: its bias correction starts again
    assert math.isclose(sched.get_last_lr()[0], 1e-4 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))
    # a resumed run restores the stage's rate from the state dicts
    q, opt2, sched2 = _adamw_and_cosine(1e-3)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    sched2.step()
    assert math.isclose(sched2.get_last_lr()[0], 1e-4 * 0.5 * (1 + math.cos(math.pi * 6 / 10)))


def test_cold_start_defaults_to_sfts_rate_then_grpos_unless_a_rate_is_set() -> None:
    cfg = load_config(None, ["recipe=cold-start"])
    assert (cfg.optim.lr, cfg.baseline.cold_start_rl_lr) == (RECIPE_LR["sft"], RECIPE_LR["grpo"])
    cfg = load_config(None, ["recipe=cold-start", "optim.lr=3e-4"])  # one rate named: both stages use it
    assert (cfg.optim.lr, cfg.baseline.cold_start_rl_lr) == (3e-4, None)
    cfg = load_config(None, ["recipe=cold-start", "optim.lr=3e-4", "baseline.cold_start_rl_lr=2e-5"])
    assert (cfg.optim.lr, cfg.baseline.cold_start_rl_lr) == (3e-4, 2e-5)


def test_cold_start_run_switches_rate_at_the_rl_stage(tmp_path) -> None:
    args = ["recipe=cold-start", "train.steps=4", "baseline.sft_steps=2", "optim.lr=1e-3", "baseline.cold_start_rl_lr=1e-4",
            "rollout.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=8",
            "train.sft_batch_size=4", "task.arith.n_test=4", "task.arith.n_test_hard=4", "eval.every=0",
            "log.progress=false", "log.tensorboard=false", f"run.output_dir={tmp_path}", "run.name=cs"]
    proc = subprocess.run([sys.executable, "-m", "bridgerl", "train", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "cs" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "lr/theta" in r]
    assert [(r["phase_sft"], r["lr/theta"]) for r in steps] == [(1.0, 1e-3), (1.0, 1e-3), (0.0, 1e-4), (0.0, 1e-4)]
