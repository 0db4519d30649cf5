"""The real vLLM engine on a CUDA machine (`pip install -e ".[vllm]"`; skipped elsewhere): the checks
of benchmarks/check_gpu.py as tests. The live policy (LoRA w != 0, theta moved) is synced into
vLLM, whose fp32 log-probs must match the trainer's within a tolerance, before and after a weight
change, and whose sampled groups must have the HF engine's layout. Greedy agreement with HF is
reported by the script, not asserted: on a GPU, near-ties may flip."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.vllm,
              pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
                                 reason="needs vLLM and a CUDA GPU")]

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import check_gpu  # noqa: E402

ARGS = ["--prompts", "8", "--n", "8", "--max-new-tokens", "32", "--sleep-level", "1"]


def test_vllm_follows_the_live_policy_on_the_pretrained_embedded_model():
    out = check_gpu.check_vllm("embedded", check_gpu.parse_args(ARGS), device="cuda")  # one engine in this process
    failed = {k: c for k, c in out["checks"].items() if not c["passed"]}
    assert not failed, failed


def test_vllm_follows_a_qwen2_model_with_biases_and_an_untied_head():
    out = check_gpu.run_child("qwen2-bias", check_gpu.parse_args(ARGS))  # its own process: one engine each
    failed = {k: c for k, c in out["checks"].items() if not c["passed"]}
    assert not failed, (failed, out.get("log_tail"))
