"""Writes examples/data/additions/: two-digit additions for a real pretrained LM (configs/smollm2-additions.yaml).

SmolLM2-135M-Instruct answers about one in five of these right, greedily, when asked for the number
only: real headroom for SFT and RL, in completions of a few tokens that a 2-core CPU can train on.

    python examples/make_additions.py     # rewrites the files (seeded: the same rows every time)

Files (chat-message prompts, rendered with the model's chat template; `answer` for the reward
`number_answer`; `solution` is the expert completion the SFT side imitates):
  rl.jsonl    2,000 RL prompts (no solution: the RL side needs none, as in the paper)
  sft.jsonl     256 expert demonstrations, "a + b = c" (scarce, reused for epochs)
  val.jsonl     300 problems for choosing rates
  test.jsonl    400 held-out problems
No question appears in two files.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "additions"
SIZES = {"test": 400, "val": 300, "sft": 256, "rl": 2000}  # drawn in this order: evaluation first
INSTRUCTION = "What is {a} + {b}? Answer with the number only."


def row(a: int, b: int, with_solution: bool) -> dict:
    out = {"prompt": [{"role": "user", "content": INSTRUCTION.format(a=a, b=b)}], "answer": str(a + b)}
    if with_solution:
        out["solution"] = f"{a} + {b} = {a + b}"
    return out


def main(seed: int = 2026) -> None:
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    OUT.mkdir(parents=True, exist_ok=True)
    start = 0
    for name, n in SIZES.items():
        chosen = pairs[start:start + n]
        start += n
        with (OUT / f"{name}.jsonl").open("w") as f:
            for a, b in chosen:
                f.write(json.dumps(row(a, b, name == "sft")) + "\n")
    print(f"wrote {', '.join(f'{k} {v}' for k, v in SIZES.items())} rows to {OUT}")


if __name__ == "__main__":
    main()
