"""compare: run planning, time-to-accuracy, the cold-start dip, the table numbers and the report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from bridgerl.config import ConfigError
from bridgerl.config_load import load_config
from bridgerl.report.compare import PlannedRun, child_argv, config_mismatch, plan_runs, run_config, write_outputs
from bridgerl.report.lr_sweep import LR_EXTEND_MAX, lr_extensions, lr_step
from bridgerl.report.plots import load_run
from bridgerl.report.summary import (largest_drop, lr_selection, mean_std, pct, stage_dip, summarize, switch_step,
                                     time_to_reach)
from run_folders import record, write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ns(**kw) -> argparse.Namespace:
    base = dict(recipes=None, seeds=1, steps=None, minutes=None, name="t", reward_noise=None, lam_sweep=None,
                lr_sweep=None, lr_extend=False, meta_ablation=False, jobs=1, args=[])
    return argparse.Namespace(**{**base, **kw})


# -- measures on hand-made curves -----------------------------------------------------------------

def test_time_to_reach_is_the_first_evaluation_at_or_above_the_target() -> None:
    t, acc = np.array([0.0, 10.0, 20.0, 30.0]), np.array([0.1, 0.3, 0.5, 0.4])
    assert time_to_reach(t, acc, 0.45) == 20.0
    assert time_to_reach(t, acc, 0.3) == 10.0  # reaching the target exactly counts
    assert time_to_reach(t, acc, 0.6) is None
    assert time_to_reach(t, acc, 0.0) == 0.0


def test_dip_is_measured_from_the_last_evaluation_before_the_switch() -> None:
    steps, acc = np.array([0, 25, 50, 75, 100, 125]), np.array([0.1, 0.3, 0.4, 0.25, 0.2, 0.45])
    d = stage_dip(steps, acc, 50)
    assert d["before"] == 0.4 and d["first_after"] == 0.25 and d["first_after_step"] == 75
    assert d["drop_first"] == pytest.approx(0.15) and d["drop_max"] == pytest.approx(0.2)
    assert d["recovered_step"] == 125
    d = stage_dip(steps, acc, 60)  # the switch between evaluations: before = the step-50 evaluation
    assert d["before"] == 0.4 and d["first_after_step"] == 75
    assert stage_dip(np.array([0, 25, 50]), np.array([0.1, 0.2, 0.3]), 50) is None  # nothing after
    rising = stage_dip(np.array([0, 50, 100]), np.array([0.1, 0.3, 0.5]), 50)
    assert rising["drop_first"] == pytest.approx(-0.2)  # negative = no dip
    assert stage_dip(steps, np.array([0.1, 0.3, 0.4, 0.25, 0.2, 0.3]), 50)["recovered_step"] is None


def test_largest_drop_between_consecutive_evaluations() -> None:
    assert largest_drop(np.array([0.1, 0.3, 0.2, 0.5, 0.35])) == pytest.approx(0.15)
    assert largest_drop(np.array([0.1, 0.2, 0.3])) == 0.0
    assert largest_drop(np.array([0.4])) == 0.0


def test_switch_step_is_the_last_sft_step_logged(tmp_path: Path) -> None:
    cold = load_run(write_run(tmp_path, "cold-start-s0", "cold-start", {0: 0.1}, 0.2, steps=6, sft_steps=3))
    assert switch_step(cold) == 3
    sft = load_run(write_run(tmp_path, "sft-s0", "sft", {0: 0.1}, 0.2, steps=4, sft_steps=4))
    assert switch_step(sft) is None  # never switched


# -- table numbers ------------------------------------------------------------------------------

def test_table_is_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    recs = [record(write_run(tmp_path, f"grpo-s{i}", "grpo", {0: 0.1}, acc, dt=1.0 + i), "grpo", "grpo", i)
            for i, acc in enumerate([0.2, 0.4, 0.6])]
    recs.append(record(write_run(tmp_path, "base-s0", "sft", {0: 0.1}, 0.1, steps=0), "base", "sft", 0))
    rows = {r["label"]: r for r in summarize(recs)}
    assert list(rows) == ["base", "grpo"]
    g = rows["grpo"]
    assert g["n"] == 3
    assert g["test"][0] == pytest.approx(0.4) and g["test"][1] == pytest.approx(0.2)  # ddof=1
    assert g["hard"][0] == pytest.approx(0.2) and g["hard"][1] == pytest.approx(0.1)
    assert g["time_s"][0] == pytest.approx(2.0 + 4 * 2.0)  # dt 1, 2, 3 -> time 6, 10, 14
    assert g["mem_mb"][0] == pytest.approx(101.0)  # the per-run peak, not the process-cumulative one
    assert rows["base"]["test"] == (pytest.approx(0.1), None)  # one value: no std
    assert pct(g["test"]) == "40.0 ± 20.0" and pct(rows["base"]["test"]) == "10.0"
    assert mean_std([]) == (None, None)


def test_time_to_cold_start_accuracy_per_recipe(tmp_path: Path) -> None:
    from bridgerl.report.plots import group_runs

    dirs = [write_run(tmp_path, "cold-start-s0", "cold-start", {0: 0.1, 2: 0.2}, 0.3, dt=2.0, sft_steps=2),
            write_run(tmp_path, "cold-start-s1", "cold-start", {0: 0.1, 2: 0.2}, 0.5, dt=2.0, sft_steps=2),
            write_run(tmp_path, "bridge-s0", "bridge", {0: 0.1, 2: 0.45}, 0.5),
            write_run(tmp_path, "grpo-s0", "grpo", {0: 0.1, 2: 0.2}, 0.3)]
    recs = [record(d, d.name.rsplit("-s", 1)[0], d.name.rsplit("-s", 1)[0], int(d.name[-1])) for d in dirs]
    runs = group_runs([load_run(d, r["label"], r["seed"]) for d, r in zip(dirs, recs)])
    rows = {r["label"]: r for r in summarize(recs, runs)}
    assert rows["bridge"]["target"] == pytest.approx(0.4)
    assert rows["bridge"]["reach"] == [3.0]  # step 2 at 1 + 1*2 s
    assert rows["cold-start"]["reach"] == [None, 9.0]  # seed 1's final point: the last logged time 1 + 2*4
    assert rows["grpo"]["reach"] == [None]


def test_failed_runs_are_flagged_in_the_table(tmp_path: Path) -> None:
    d = write_run(tmp_path, "bridge-s0", "bridge", {0: 0.1}, 0.3)
    summary = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**summary, "status": "shadow_collapsed"}))
    (row,) = summarize([record(d, "bridge", "bridge", 0)])
    assert row["failed"] == ["bridge-s0 shadow_collapsed"]


# -- planning -----------------------------------------------------------------------------------

def test_default_plan_runs_the_paper_baselines_and_base_once() -> None:
    plan = plan_runs(ns(seeds=2, steps=3), load_config())
    names = [p.name for p in plan]
    assert names[:9] == ["base-s0", "sft-s0", "grpo-s0", "cold-start-s0", "alternate-s0", "mix-s0", "luffy-s0",
                         "chord-s0", "bridge-s0"]
    assert "base-s1" not in names and "bridge-s1" in names and len(plan) == 17
    base = plan[0]
    assert "train.steps=0" in base.overrides and "train.steps=3" not in base.overrides
    assert "train.steps=3" in plan[2].overrides


def test_reward_noise_and_lam_sweep_only_where_they_apply() -> None:
    plan = plan_runs(ns(recipes=["bridge", "sft", "grpo"], reward_noise=0.2, lam_sweep=[0.3, 0.5, 0.7]),
                     load_config())
    by = {p.name: p for p in plan}
    assert list(by) == ["sft-s0", "grpo-s0", "bridge-s0", "bridge-lam0.3-s0", "bridge-lam0.7-s0"]  # 0.5 = bridge
    assert not any("reward_noise" in o for o in by["sft-s0"].overrides)
    assert "rollout.reward_noise=0.2" in by["grpo-s0"].overrides
    assert {"recipe=bridge", "bridge.lam=0.3", "rollout.reward_noise=0.2"} <= set(by["bridge-lam0.3-s0"].overrides)


def test_lr_sweep_runs_every_recipe_at_every_rate_and_base_once() -> None:
    plan = plan_runs(ns(recipes=["base", "sft", "grpo"], lr_sweep=[1e-3, 1e-4], seeds=2, reward_noise=0.1),
                     load_config())
    by = {p.name: p for p in plan}
    assert sorted(by) == sorted(["base-s0", *(f"{r}-lr{lr}-s{s}" for r in ("sft", "grpo") for lr in ("0.001", "0.0001")
                                              for s in (0, 1))])
    assert "optim.lr=0.0001" in by["grpo-lr0.0001-s1"].overrides and "recipe=grpo" in by["grpo-lr0.0001-s1"].overrides
    assert "rollout.reward_noise=0.1" in by["grpo-lr0.001-s0"].overrides
    assert not any(o.startswith(("optim.lr", "rollout.reward_noise")) for o in by["sft-lr0.001-s0"].overrides[:-1])
    assert not any(o.startswith("optim.lr") for o in by["base-s0"].overrides)


def test_lr_sweep_user_errors() -> None:
    with pytest.raises(ConfigError, match="cannot be combined"):
        plan_runs(ns(lr_sweep=[1e-3], lam_sweep=[0.3]), load_config())
    with pytest.raises(ConfigError, match="must be > 0"):
        plan_runs(ns(lr_sweep=[1e-3, 0.0]), load_config())
    with pytest.raises(ConfigError, match="--lr-extend extends an lr sweep"):
        plan_runs(ns(lr_extend=True), load_config())
    with pytest.raises(ConfigError, match="has none"):
        plan_runs(ns(lr_sweep=[1e-3]), load_config(None, ["task.arith.n_val=0"]))


def test_lr_selection_chooses_on_val_mean_over_seeds_never_on_test(tmp_path: Path) -> None:
    recs = []
    # recipe a: val prefers 1e-4 on the seed mean (0.30 vs 0.25) although test prefers 1e-3
    for lr, seed, val, test in [(1e-3, 0, 0.40, 0.9), (1e-3, 1, 0.10, 0.9), (1e-4, 0, 0.30, 0.1),
                                (1e-4, 1, 0.30, 0.1), (1e-4, 2, None, 0.1)]:
        d = write_run(tmp_path, f"a-lr{lr:g}-s{seed}", "a", {0: 0.1}, test)
        recs.append({**record(d, f"a-lr{lr:g}", "a", seed), "lr": lr, "val_accuracy": val})
    # recipe b: a tie goes to the rate named first
    for lr in (1e-3, 1e-4):
        d = write_run(tmp_path, f"b-lr{lr:g}-s0", "b", {0: 0.1}, 0.5)
        recs.append({**record(d, f"b-lr{lr:g}", "b", 0), "lr": lr, "val_accuracy": 0.2})
    base = write_run(tmp_path, "base-s0", "sft", {0: 0.1}, 0.1, steps=0)
    recs.append({**record(base, "base", "sft", 0), "val_accuracy": 0.15})  # no "lr": never a candidate
    recs[5]["summary"]["status"] = "shadow_collapsed"  # b at 1e-3: flagged, still a candidate
    sel = lr_selection(recs, [1e-4, 1e-3])
    assert set(sel) == {"a", "b"} and sel["b"]["failed"] == {1e-3: 1} and not sel["a"]["failed"]
    assert sel["a"]["val"] == pytest.approx({1e-3: 0.25, 1e-4: 0.30}) and sel["a"]["chosen"] == 1e-4
    assert sel["a"]["test"] == pytest.approx({1e-3: 0.9, 1e-4: 0.1})
    assert sel["b"]["chosen"] == 1e-4  # first in [1e-4, 1e-3]
    assert lr_selection(recs, [1e-3, 1e-4])["b"]["chosen"] == 1e-3


def test_lr_step_walks_the_1_3_10_series() -> None:
    assert [lr_step(x, up=True) for x in (1e-3, 3e-4, 5e-4, 3e-3)] == [3e-3, 1e-3, 1e-3, 1e-2]
    assert [lr_step(x, up=False) for x in (1e-3, 1e-4, 5e-4, 3e-5)] == [3e-4, 3e-5, 3e-4, 1e-5]


def test_lr_extend_adds_the_next_rate_past_an_edge_best_for_every_seed(tmp_path: Path) -> None:
    def run(recipe: str, lr: float, seed: int, val: float) -> tuple[PlannedRun, dict]:
        pr = PlannedRun(f"{recipe}-lr{lr:g}", recipe, seed, [f"recipe={recipe}", "train.steps=5", f"optim.lr={lr}"])
        d = write_run(tmp_path, pr.name, recipe, {0: 0.1}, 0.5)
        return pr, {**record(d, pr.label, recipe, seed), "lr": lr, "val_accuracy": val}
    vals = {"top": (0.5, 0.2, 0.1), "bottom": (0.1, 0.2, 0.5), "inside": (0.1, 0.5, 0.1)}
    pairs = [run(r, lr, seed, v) for r, vs in vals.items() for lr, v in zip((1e-3, 3e-4, 1e-4), vs) for seed in (0, 1)]
    plan, recs = [p for p, _ in pairs], [r for _, r in pairs]
    extra = lr_extensions(plan, recs, [1e-3, 3e-4, 1e-4])
    assert sorted(p.name for p in extra) == ["bottom-lr3e-05-s0", "bottom-lr3e-05-s1", "top-lr0.003-s0", "top-lr0.003-s1"]
    top = next(p for p in extra if p.name == "top-lr0.003-s1")
    assert top.overrides == ["recipe=top", "train.steps=5", "optim.lr=0.003"] and top.seed == 1
    # a recipe stops extending after LR_EXTEND_MAX rates past the grid
    more = [run("top", lr, 0, 0.6 + i / 10) for i, lr in enumerate((3e-3, 1e-2, 3e-2)[:LR_EXTEND_MAX])]
    assert not [p for p in lr_extensions(plan + [p for p, _ in more], recs + [r for _, r in more], [1e-3, 3e-4, 1e-4])
                if p.recipe == "top"]


def test_wall_clock_budget_sets_max_minutes_and_many_steps() -> None:
    plan = plan_runs(ns(recipes=["grpo", "sft", "cold-start"], minutes=2.0), load_config())
    assert [p.label for p in plan] == ["sft", "grpo", "cold-start"]  # sft first: cold-start's switch uses it
    assert {"train.max_minutes=2.0", "train.steps=1000000"} <= set(plan[1].overrides)
    with pytest.raises(ConfigError, match="baseline.sft_steps"):
        plan_runs(ns(recipes=["cold-start"], minutes=2.0), load_config())
    assert plan_runs(ns(recipes=["cold-start"], minutes=2.0), load_config(None, ["baseline.sft_steps=5"]))


def test_unknown_recipe_is_a_user_error() -> None:
    with pytest.raises(ConfigError, match="unknown recipe"):
        plan_runs(ns(recipes=["ppo"]), load_config())


def test_jobs_below_one_and_jobs_with_a_wall_clock_budget_are_user_errors() -> None:
    with pytest.raises(ConfigError, match="--jobs must be >= 1"):
        plan_runs(ns(jobs=0, steps=2), load_config())
    with pytest.raises(ConfigError, match="--jobs > 1 cannot be combined with --minutes"):
        plan_runs(ns(recipes=["sft", "grpo"], jobs=2, minutes=1.0), load_config())
    assert plan_runs(ns(recipes=["sft", "grpo"], jobs=2, steps=2), load_config())


def test_a_child_run_gets_the_same_config_as_the_in_process_run(tmp_path: Path) -> None:
    from bridgerl.cli import _split_config_args

    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump({"train": {"steps": 7}}))
    user = ["rollout.num_generations=2", "log.progress=true"]
    (pr,) = plan_runs(ns(recipes=["grpo"], steps=3), load_config(str(config_file), user))
    (tmp_path / pr.name).mkdir()  # an interrupted run: both resume it
    argv = child_argv(str(config_file), user, pr, tmp_path)
    assert argv[:4] == [sys.executable, "-m", "bridgerl", "train"]
    child = load_config(*_split_config_args(argv[4:]))
    in_process = run_config(str(config_file), user, pr, tmp_path)
    assert child.resume and child.run.name == "grpo-s0" and child.train.steps == 3
    assert not child.log.progress  # children never draw progress bars over each other
    child.log.progress = True
    assert child == in_process


def test_a_finished_run_with_other_settings_is_detected() -> None:
    cfg = load_config(None, ["train.steps=5"])
    stored = yaml.safe_load(yaml.safe_dump({"train": {"steps": 2}, "log": {"progress": False}, "newer": 1}))
    assert config_mismatch(stored, cfg) == ["train.steps: 2 -> 5"]
    # base (zero steps) is the same model whatever its rates; a trained run is not
    base = load_config(None, ["recipe=sft", "train.steps=0"])
    rates = {"train": {"steps": 0}, "optim": {"lr": 5e-2}, "baseline": {"cold_start_rl_lr": 1.0}}
    assert base.optim.lr != 5e-2 and config_mismatch(rates, base) == []
    trained = load_config(None, ["recipe=cold-start", "train.steps=5"])
    assert config_mismatch({**rates, "train": {"steps": 5}}, trained)[0].startswith("baseline.cold_start_rl_lr")


def test_settings_only_other_recipes_read_do_not_make_a_run_stale() -> None:
    """A finished sft run stays valid when only bridge's adapter, shadow or lam settings, or another
    baseline's own knobs (CHORD's schedule, LUFFY's gamma), change; the recipe that reads them is stale."""
    bridge_only = {"optim": {"lora_lr": 1e-3, "shadow_lr": 1e-4}, "bridge": {"shadow_rollouts": "shared", "lam": 0.3}}
    changed = ["optim.lora_lr=3e-4", "optim.shadow_lr=3e-4", "bridge.shadow_rollouts=own", "bridge.lam=0.5"]
    assert config_mismatch(bridge_only, load_config(None, ["recipe=sft", *changed])) == []
    assert len(config_mismatch(bridge_only, load_config(None, ["recipe=bridge", *changed]))) == 4
    baselines = {"baseline": {"chord_mu_peak": 0.5, "chord_warmup_steps": 25, "luffy_gamma": 0.2, "mix_mu": 0.5}}
    assert config_mismatch(baselines, load_config(None, ["recipe=sft"])) == []
    assert config_mismatch(baselines, load_config(None, ["recipe=grpo"])) == []
    assert len(config_mismatch(baselines, load_config(None, ["recipe=chord"]))) == 2
    assert [c.split(":")[0] for c in config_mismatch(baselines, load_config(None, ["recipe=luffy"]))] == [
        "baseline.luffy_gamma"]
    assert [c.split(":")[0] for c in config_mismatch(baselines, load_config(None, ["recipe=mix"]))] == ["baseline.mix_mu"]


# -- the written report -----------------------------------------------------------------------------

def test_report_from_synthetic_runs(tmp_path: Path) -> None:
    dirs = {("base", 0): write_run(tmp_path, "base-s0", "sft", {0: 0.1}, 0.1, steps=0)}
    for seed in (0, 1):
        dirs[("cold-start", seed)] = write_run(tmp_path, f"cold-start-s{seed}", "cold-start",
                                               {0: 0.1, 2: 0.4, 3: 0.2}, 0.3 + 0.1 * seed, sft_steps=2)
        dirs[("bridge", seed)] = write_run(tmp_path, f"bridge-s{seed}", "bridge", {0: 0.1, 2: 0.3}, 0.5 + 0.1 * seed)
        dirs[("grpo", seed)] = write_run(tmp_path, f"grpo-s{seed}", "grpo", {0: 0.1, 2: 0.2}, 0.2 + 0.1 * seed)
    recs = [record(d, label, label if label != "base" else "sft", seed) for (label, seed), d in dirs.items()]
    settings = {"name": "t", "recipes": ["base", "grpo", "cold-start", "bridge"], "seeds": 2, "steps": 4,
                "minutes": None, "reward_noise": None, "lam_sweep": None, "config_file": None, "overrides": [],
                "task": "arith", "model": "embedded", "machine": "x86_64", "started": "now"}
    report = write_outputs(tmp_path, settings, recs)
    text = report.read_text()
    # runs without per-problem grades: CIs over seeds only (†), none for one seed
    assert "| bridge | 2 | 55.0 [50.0, 60.0]† | 7.1 | +45.0 [+40.0, +50.0]† | 27.5 [25.0, 30.0]† | 10.0 ± 0.0 | 4 | 6 " \
           "| 100 ± 1 | 5 s (2/2) | 36.0 |" in text  # the gain over the base's one evaluation, paired by seed
    assert "| base | 1 | 10.0 | – | – | 5.0 |" in text
    assert "| bridge - cold-start | test | +20.0 [+20.0, +20.0] points | 2 seeds only (per-problem grades missing in " \
           "4 of 4 runs) | holds |" in text
    assert "Only 2 seeds in some comparison" in text
    assert "switch after step 2; 40.0% at the switch, 20.0% early after it (step 3)" in text
    assert "target = cold-start's mean final test accuracy, 35.0%" in text
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["runs"]) == 7 and results["table"][-1]["label"] == "bridge"
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["accuracy_vs_step.png", "accuracy_vs_time.png"]  # no reward metrics logged
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in pngs)
    assert "![accuracy_vs_step](plots/accuracy_vs_step.png)" in text


# -- end to end -----------------------------------------------------------------------------------

TINY = ["task.arith.n_test=16", "task.arith.n_test_hard=16", "task.arith.n_rl_train=32", "task.arith.n_sft_train=32",
        "rollout.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=16",
        "train.sft_batch_size=4", "eval.every=1", "log.tensorboard=false", "log.progress=false"]


def _model(tmp_path: Path) -> str:
    """The embedded testbed model; a fresh random tiny Llama while the asset is being rebuilt."""
    from bridgerl.models.loading import embedded_path
    from bridgerl.models.tiny import build_model, build_tokenizer

    if (embedded_path() / "config.json").is_file():
        return "embedded"
    tok = build_tokenizer()
    build_model(tok).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    return str(tmp_path / "tiny")


@pytest.mark.slow
def test_compare_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bridgerl.cli import main

    argv = ["compare", "--recipes", "base", "grpo", "--seeds", "1", "--steps", "2", "--name", "e2e",
            *TINY, f"model.name_or_path={_model(tmp_path)}", f"run.output_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = tmp_path / "compare-e2e"
    results = json.loads((out / "results.json").read_text())
    assert [r["run_dir"] for r in results["runs"]] == ["base-s0", "grpo-s0"]
    assert results["runs"][1]["summary"]["steps"] == 2
    assert results["runs"][0]["summary"]["steps"] == 0
    text = (out / "report.md").read_text()
    assert "| grpo | 1 |" in text and "| base | 1 |" in text
    # the final evaluation's per-problem grades reach the report: a CI over the 16 test problems
    assert (out / "grpo-s0" / "completions" / "final_test.jsonl").is_file()
    grpo = next(r for r in results["table"] if r["label"] == "grpo")
    assert grpo["test_ci"]["basis"] == "1 seed x 16 problems" and grpo["test_ci"]["problems"] == 16
    assert grpo["test_ci"]["mean"] == pytest.approx(results["runs"][1]["summary"]["eval/accuracy"])
    for name in ("accuracy_vs_step.png", "accuracy_vs_time.png", "reward_vs_step.png", "length_vs_step.png"):
        assert (out / "plots" / name).read_bytes()[:8] == PNG_SIGNATURE

    capsys.readouterr()
    with pytest.raises(SystemExit):  # a second call resumes: both runs are skipped
        main(argv)
    assert "skipping grpo-s0" in capsys.readouterr().err


@pytest.mark.slow
def test_lr_sweep_end_to_end_scores_each_final_model_on_val(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bridgerl.cli import main

    argv = ["compare", "--recipes", "base", "grpo", "--lr-sweep", "1e-3", "1e-4", "--lr-extend", "--steps", "1",
            "--name", "lr", "--jobs", "2", *TINY, "task.arith.n_val=16", f"model.name_or_path={_model(tmp_path)}",
            f"run.output_dir={tmp_path}"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    # the runs are child processes (--jobs 2); val scoring loads each final model here, without
    # transformers' own bars
    assert "Loading weights" not in capsys.readouterr().err
    out = tmp_path / "compare-lr"
    results = json.loads((out / "results.json").read_text())
    runs = {r["run_dir"]: r for r in results["runs"]}
    assert {"base-s0", "grpo-lr0.0001-s0", "grpo-lr0.001-s0"} < set(runs)  # two rates: the best is an edge
    assert runs["grpo-lr0.0001-s0"]["lr"] == 1e-4 and "lr" not in runs["base-s0"]
    rates = sorted(r["lr"] for r in runs.values() if "lr" in r)
    chosen = results["lr_selection"]["grpo"]
    assert rates[0] < chosen < rates[-1] or len(rates) == 2 + LR_EXTEND_MAX  # inside, or extended to the cap
    # the val score is the final model's greedy accuracy on val, as `bridgerl eval --split val` gives it
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["eval", str(out / "base-s0" / "final"), "task.arith.n_val=16",
              *[a for a in TINY if a.startswith("task.")], "--split", "val"])
    captured = capsys.readouterr()
    printed = captured.out
    assert printed, captured.err
    assert runs["base-s0"]["val_accuracy"] > 0  # the shipped base answers some val problems
    assert f"pass@1 = {runs['base-s0']['val_accuracy']:.4f}" in printed
    order = list(dict.fromkeys([1e-3, 1e-4, *(r["lr"] for r in results["runs"] if "lr" in r)]))  # ties: grid first
    best = max(order, key=lambda lr: runs[f"grpo-lr{lr:g}-s0"]["val_accuracy"])
    assert chosen == best
    assert "## Learning-rate selection" in (out / "report.md").read_text()


def _compare(argv: list[str]) -> int:
    from bridgerl.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["compare", *argv])
    return exc.value.code


@pytest.fixture(scope="module")
def parallel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """sft and grpo, one seed, two steps, as two concurrent child processes; (output root, shared arguments)."""
    root = tmp_path_factory.mktemp("jobs")
    common = ["--seeds", "1", "--steps", "2", *TINY, f"model.name_or_path={_model(root)}", f"run.output_dir={root}"]
    assert _compare(["--recipes", "sft", "grpo", "--jobs", "2", "--name", "par", *common]) == 0
    return root, common


@pytest.mark.slow
def test_parallel_runs_are_recorded_in_plan_order_with_their_own_peak_memory(
        parallel: tuple[Path, list[str]]) -> None:
    out = parallel[0] / "compare-par"
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["jobs"] == 2
    assert [r["run_dir"] for r in results["runs"]] == ["sft-s0", "grpo-s0"]
    for r in results["runs"]:
        assert r["summary"]["steps"] == 2 and r["summary"]["status"] == "ok" and not r["skipped"]
        assert r["peak_rss_mb_run"] > 0
        assert json.loads((out / r["run_dir"] / "compare.json").read_text())["peak_rss_mb_run"] == r["peak_rss_mb_run"]
        assert (out / f"{r['run_dir']}.log").is_file()  # each child's output, beside its run folder
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["grpo-s0", "plots", "sft-s0"]
    assert "| grpo | 1 |" in (out / "report.md").read_text()
    assert (out / "plots" / "accuracy_vs_step.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_a_seed_trains_the_same_in_a_child_process_as_in_process(parallel: tuple[Path, list[str]]) -> None:
    import torch

    root, common = parallel
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two children on this 2-core machine (cpus // jobs, at least 1)
    try:
        assert _compare(["--recipes", "grpo", "--jobs", "1", "--name", "seq", *common]) == 0
    finally:
        torch.set_num_threads(threads)

    def rows(run_dir: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith(("time", "step_time"))} for r in load_run(run_dir).rows]

    child, in_process = root / "compare-par" / "grpo-s0", root / "compare-seq" / "grpo-s0"
    assert rows(child) == rows(in_process) and len(rows(child)) == 4
    summary = [json.loads((d / "summary.json").read_text()) for d in (child, in_process)]
    assert [s["eval/accuracy"] for s in summary] == [summary[1]["eval/accuracy"]] * 2


@pytest.mark.slow
def test_a_failed_child_stops_new_launches_lets_running_runs_finish_and_names_its_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import bridgerl.report.compare as compare

    def argv(path, user, pr, compare_dir):  # sft fails at once; grpo trains for real meanwhile
        if pr.label == "sft":
            return [sys.executable, "-c", "import sys; print('boom: no such thing'); sys.exit(3)"]
        return child_argv(path, user, pr, compare_dir)

    monkeypatch.setattr(compare, "child_argv", argv)
    code = _compare(["--recipes", "sft", "grpo", "bridge", "--jobs", "2", "--steps", "1", "--name", "fail", *TINY,
                     f"model.name_or_path={_model(tmp_path)}", f"run.output_dir={tmp_path}"])
    out = tmp_path / "compare-fail"
    err = capsys.readouterr().err
    assert code == 1
    assert f"run sft-s0 failed with exit code 3 (boom: no such thing); its output is in {out / 'sft-s0.log'}" in err
    assert not (out / "bridge-s0.log").exists() and not (out / "bridge-s0").exists()  # never launched
    results = json.loads((out / "results.json").read_text())  # grpo, already running, finished and counts
    assert [r["run_dir"] for r in results["runs"]] == ["grpo-s0"]


def test_jobs_with_minutes_exits_with_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = _compare(["--recipes", "sft", "grpo", "--jobs", "2", "--minutes", "1", f"run.output_dir={tmp_path}"])
    assert code == 2
    assert "--jobs > 1 cannot be combined with --minutes" in capsys.readouterr().err
