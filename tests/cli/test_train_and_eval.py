"""Every recipe runs from the command line on the embedded testbed and writes the promised outputs;
`bridgerl eval` reports pass@1 (and avg@k / pass@k) with the task's own grader."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bridgerl.config import RECIPES

TINY = ["train.steps=2", "rollout.prompts_per_step=2", "rollout.num_generations=2", "rollout.max_new_tokens=24",
        "train.sft_batch_size=4", "task.arith.n_test=8", "task.arith.n_test_hard=4", "eval.every=1",
        "log.progress=false", "lora.r=4", "baseline.sft_steps=1"]


def _bridgerl(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "bridgerl", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_runs_and_writes_config_metrics_summary_tensorboard_and_model(tmp_path, recipe):
    from transformers import AutoModelForCausalLM

    proc = _bridgerl("train", f"recipe={recipe}", *TINY, f"run.output_dir={tmp_path}", f"run.name={recipe}", cwd=tmp_path)
    run = tmp_path / recipe
    # the console says where the run went, at the start and the end, without transformers' own bars
    assert f"run folder: {run} (new)" in proc.stderr and f"run folder: {run} (summary.json" in proc.stderr
    assert "Loading weights" not in proc.stderr and "Writing model shards" not in proc.stderr
    assert "recipe: " + recipe in (run / "config.yaml").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step_time" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for r in steps:
        assert "time_s" in r and any(k.startswith("time/") for k in r)
        if r.get("phase_sft") != 1.0 and recipe != "sft":
            assert {"reward", "reward_std", "frac_reward_zero_std", "completions/mean_length"} <= r.keys()
    assert any("eval/accuracy" in r for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("eval/accuracy", "eval_hard/accuracy", "initial/eval/accuracy", "initial/eval_hard/accuracy",
                "time_s", "peak_rss_mb"):
        assert isinstance(summary[key], float), key
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    model = AutoModelForCausalLM.from_pretrained(run / "final")
    assert not any("lora" in n for n, _ in model.named_parameters())
    # How much of the demonstrations the model can produce: the p-weighted expert terms of LUFFY and
    # CHORD vanish on tokens it gives ~0, so these are logged wherever expert tokens are trained.
    expert_keys = {"luffy": "off_policy/prob_mean", "chord": "sft/phi_mean", "sft": "sft/prob_mean",
                   "mix": "sft/prob_mean", "bridge": "sft/prob_mean"}
    if recipe in expert_keys:
        assert all(0.0 <= r[expert_keys[recipe]] <= 1.0 for r in steps)
    if recipe == "bridge":
        assert (run / "shadow" / "model.safetensors").is_file() and (run / "adapter" / "adapter_config.json").is_file()
        assert "shadow/eval/accuracy" in summary and any("bridge/coop_gain" in r for r in rows)
        # one name for the shadow's accuracy: summary.json, metrics.jsonl (periodic and final) and TensorBoard
        assert [r["step"] for r in rows if "shadow/eval/accuracy" in r] == [1, 2]
        assert not any(k.startswith("eval_shadow") for r in rows for k in r)
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        tags = EventAccumulator(str(run / "tensorboard")).Reload().Tags()["scalars"]
        assert "shadow/eval/accuracy" in tags and not any(t.startswith("eval_shadow") for t in tags)
        # the saved shadow/ is the shadow the summary scored
        same_task = [a for a in TINY if a.startswith(("task.", "rollout.max_new_tokens"))]
        out = _bridgerl("eval", str(run / "shadow"), *same_task, cwd=tmp_path).stdout
        assert json.loads(out[out.index("{"):])["arith"]["greedy_pass@1"] == summary["shadow/eval/accuracy"]


def test_eval_prints_pass_at_1_of_the_shipped_base_model(tmp_path):
    out = _bridgerl("eval", "embedded", "--limit", "50", "--out", str(tmp_path / "c.jsonl"), cwd=tmp_path).stdout
    assert "greedy pass@1 = " in out and "sampled" not in out
    result = json.loads(out[out.index("{"):])
    assert 0.0 < result["arith"]["greedy_pass@1"] < 0.5 and result["arith"]["n"] == 50
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 50


def test_eval_with_k_samples_reports_avg_and_unbiased_pass_at_k(tmp_path):
    out = _bridgerl("eval", "embedded", "--limit", "16", "--k", "4", cwd=tmp_path).stdout
    # greedy and sampled figures are labelled apart (greedy pass@1 may exceed a sampled pass@2)
    line = out.splitlines()[0]
    assert line.index("greedy pass@1 = ") < line.index("sampled (k=4, temperature=1): avg@4 = ") < line.index("pass@4")
    result = json.loads(out[out.index("{"):])["arith"]
    assert {"avg@4", "pass@4", "sampled_pass@1"} <= result.keys()
    assert result["pass@4"] >= result["sampled_pass@1"]


def test_eval_on_the_math_benchmark_files_reports_each_benchmark(tmp_path):
    from pathlib import Path

    data = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not (data / "math500" / "test.jsonl").is_file():
        pytest.skip(f"benchmark files not found under {data}")
    out = _bridgerl("eval", "embedded", "--benchmark", "all", "--data-root", str(data), "--limit", "2",
                    "--max-new-tokens", "4", "--k", "2", cwd=tmp_path).stdout
    result = json.loads(out[out.index("{"):])
    assert set(result) == {"math500", "minerva_math", "olympiadbench", "aime24", "amc23", "gsm8k"}
    for name, r in result.items():
        assert r["n"] == 2 and 0.0 <= r["greedy_pass@1"] <= 1.0 and "avg@2" in r, name
