# %% [markdown]
# # bridgerl from Python: your data, your reward, a few steps of BRIDGE
#
# A notebook as a script (jupytext "percent" cells): run it as `python examples/quickstart.py`, or open
# it in Jupyter. It trains the tiny model shipped in the package on `data/sums.jsonl` (48 four-number
# sums with worked solutions) and grades with the reward functions defined in the next cell.

# %%
import os
import re
from pathlib import Path

from bridgerl import Config, evaluate, train

HERE = Path(__file__).parent if "__file__" in globals() else Path.cwd()  # a notebook runs in its folder
OUTPUT_DIR = os.environ.get("OUTPUT_DIR", "runs")


# %% [markdown]
# A reward function follows TRL's contract: `f(prompts, completions, **columns) -> list[float | None]`,
# each column of the data arriving by name. The same functions grade the evaluation.

# %%
def correct(completions, answer, **kwargs):
    found = [re.search(r"#(-?\d+)", c) for c in completions]
    return [1.0 if m and m.group(1) == a else 0.0 for m, a in zip(found, answer)]


def ends_with_answer(completions, **kwargs):
    return [1.0 if re.search(r"#-?\d+\s*$", c) else 0.0 for c in completions]


# %% [markdown]
# The typed config: the same fields as the YAML files (`bridgerl.Config`, documented in config.py).
# `task.user.train` takes a file, a hub id, a `datasets.Dataset` or a list of dicts; 10% of it is
# held out as the test split.

# %%
config = Config(recipe="bridge")
config.task.name = "user"
config.task.user.train = str(HERE / "data" / "sums.jsonl")
config.task.reward_funcs = [correct, ends_with_answer]
config.task.reward_weights = [1.0, 0.1]  # accuracy: weighted reward >= task.accuracy_threshold (1.0)

# A few small steps, so that it runs in seconds on a CPU (and a gentle rate, for steps this few)
result = train(config, train={"steps": 4, "sft_batch_size": 8}, optim={"lr": 3e-4}, lora={"r": 4},
               rollout={"prompts_per_step": 4, "num_generations": 4, "max_new_tokens": 24},
               run={"output_dir": OUTPUT_DIR, "name": "quickstart"})
print(f"test accuracy {result.summary['initial/eval/accuracy']:.2f} -> {result.summary['eval/accuracy']:.2f}")
print("run folder:", result.run_dir)

# %% [markdown]
# Evaluate the trained model again (here on the training prompts), graded by the same functions.

# %%
scores = evaluate(result, split="rl_train", limit=16)
print(f"rl_train accuracy {scores.accuracy:.2f}; first completion: {scores.records[0]['completion']!r}")
