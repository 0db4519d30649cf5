"""Reward / evaluation parity: a reward imported from a module outside the package gives the training
reward (its weighted value) and the evaluation grade (that value >= task.accuracy_threshold)."""

from __future__ import annotations

import json
import textwrap

import bridgerl

SCORER = '''
import json, pathlib

LOG = pathlib.Path(__file__).with_name("calls.jsonl")

def partial(prompts, completions, answer, **kwargs):
    """1.0 for the right answer, 0.25 for any other '#' answer, 0.0 without one; every call logged."""
    out = [1.0 if c.split("#")[-1].strip() == a else 0.25 if "#" in c else 0.0 for c, a in zip(completions, answer)]
    with LOG.open("a") as f:
        f.write(json.dumps({"completions": completions, "answer": answer, "rewards": out}) + "\\n")
    return out
'''
WEIGHT, THRESHOLD = 2.0, 0.5  # weighted: 2.0 right, 0.5 wrong-but-formatted (still correct!), 0.0 unformatted


def test_training_reward_and_evaluation_grade_come_from_the_same_user_function(tmp_path, monkeypatch):
    (tmp_path / "scorer.py").write_text(textwrap.dedent(SCORER))
    monkeypatch.syspath_prepend(str(tmp_path))  # an installed module of the user's, outside the package
    rows = [{"prompt": f"Q:{a}+{b}+{c}=\nA:", "answer": str(a + b + c)} for a, b, c in
            [(1, 2, 3), (4, 1, 2), (2, 2, 5), (3, 3, 1), (5, 2, 0), (6, 1, 1), (0, 4, 4), (2, 7, 0)]]
    result = bridgerl.train(
        recipe="grpo", task={"name": "user", "reward_funcs": ["scorer:partial"], "reward_weights": [WEIGHT],
                             "accuracy_threshold": THRESHOLD, "user": {"train": rows, "test_fraction": 0.25}},
        train={"steps": 1}, rollout={"prompts_per_step": 2, "num_generations": 4, "max_new_tokens": 10,
                                    "temperature": 2.0},
        log={"progress": False, "tensorboard": False}, run={"output_dir": str(tmp_path / "runs")})
    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    (training,) = [c for c in calls if len(c["completions"]) == 8]  # the step's 2 prompts x 4 rollouts
    step = json.loads((result.run_dir / "metrics.jsonl").read_text().splitlines()[1])
    assert step["step"] == 1 and abs(step["reward"] - WEIGHT * sum(training["rewards"]) / 8) < 1e-6

    records = [json.loads(line) for line in (result.run_dir / "completions" / "final_test.jsonl").read_text().splitlines()]
    assert len(records) == 2
    import scorer  # the same function, called directly

    direct = scorer.partial([""] * 2, [r["completion"] for r in records], [r["answer"] for r in records])
    assert [r["grade"] for r in records] == [1.0 if WEIGHT * v >= THRESHOLD else 0.0 for v in direct]
    again = bridgerl.evaluate(result, split="test")
    assert [r["grade"] for r in again.records] == [r["grade"] for r in records]
