"""eval.split=val (a run made for choosing): val alone is scored, and no test number is computed."""

from __future__ import annotations

import json

import bridgerl


def _run(tmp_path, split: str) -> dict:
    result = bridgerl.train(recipe="bridge", run={"output_dir": str(tmp_path), "name": split},
                            log={"progress": False, "tensorboard": False},
                            train={"steps": 1, "sft_batch_size": 2}, eval={"split": split, "every": 1},
                            task={"arith": {"n_test": 4, "n_test_hard": 2, "n_val": 3}},
                            rollout={"max_new_tokens": 8, "prompts_per_step": 2, "num_generations": 2})
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    return {"summary": result.summary, "keys": {k for r in rows for k in r},
            "completions": sorted(p.name for p in (result.run_dir / "completions").iterdir())}


def test_a_val_run_scores_val_alone_at_start_periodically_and_at_the_end(tmp_path):
    got = _run(tmp_path, "val")
    scored = {k for k in got["summary"] if k.endswith("/accuracy")}
    assert scored == {"initial/eval_val/accuracy", "eval_val/accuracy", "shadow/eval_val/accuracy"}
    assert "eval/accuracy" not in got["keys"] and "eval_val/accuracy" in got["keys"]
    assert got["completions"] == ["final_shadow_val.jsonl", "final_val.jsonl", "initial_val.jsonl"]
    assert got["summary"]["status"] == "ok"


def test_a_test_run_scores_test_and_the_hard_split_and_not_val(tmp_path):
    got = _run(tmp_path, "test")
    scored = {k for k in got["summary"] if k.endswith("/accuracy")}
    assert scored == {f"{p}{k}/accuracy" for p in ("initial/", "", "shadow/") for k in ("eval", "eval_hard")}
