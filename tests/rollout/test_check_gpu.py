"""benchmarks/check_gpu.py on CPU: every vLLM check passes against the stand-in vLLM (which samples
with the synced weights) and fails when the weights do not reach it; without a GPU the script
says so in one line and checks the HF engine's static-cache path."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import fake_vllm
from fake_vllm import fake_vllm_module  # noqa: F401  (fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))  # the script imports _report beside it
import check_gpu  # noqa: E402

SMALL = ["--prompts", "2", "--n", "3", "--max-new-tokens", "8", "--sleep-level", "1"]


@pytest.mark.parametrize("name", check_gpu.MODELS)
def test_every_vllm_check_passes_when_vllm_samples_the_synced_policy(fake_vllm_module, name):
    out = check_gpu.check_vllm(name, check_gpu.parse_args(SMALL), device="cpu")
    assert set(out["checks"]) == {"sync", "greedy", "follow", "sample"}
    assert all(c["passed"] for c in out["checks"].values()), out["checks"]
    assert out["checks"]["greedy"]["agreement_with_hf"] == 1.0  # the stand-in shares HF's math
    assert min(out["prompt_tokens"]) >= 32  # few-shot prompts span whole KV blocks (vLLM's are 16 tokens)


def test_the_checks_fail_when_the_weights_never_reach_vllm(fake_vllm_module, monkeypatch):
    monkeypatch.setattr(fake_vllm.Model, "load_weights", lambda self, weights: set())  # a sync that drops everything
    out = check_gpu.check_vllm("embedded", check_gpu.parse_args(SMALL), device="cpu")
    failed = {k for k, c in out["checks"].items() if not c["passed"]}
    assert {"sync", "greedy", "follow", "sample"} <= failed
    assert out["checks"]["sync"]["max_logp_gap"] > 0.1


def test_without_a_gpu_the_script_says_so_and_checks_the_hf_static_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(check_gpu.torch.cuda, "is_available", lambda: False)
    out = tmp_path / "check.json"
    assert check_gpu.main(["--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "no CUDA GPU here: the vLLM checks need one and are skipped" in err and "all checks passed" in err
    report = json.loads(out.read_text())
    assert "vllm" not in report and report["hf"]["checks"]["static"]["agreement_with_dynamic"] == 1.0
