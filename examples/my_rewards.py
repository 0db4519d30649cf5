"""Reward functions for the examples, with TRL's contract:

    f(prompts, completions, **columns) -> list[float | None]   (one value per completion)

Every column of the data but the prompt arrives by name (here `answer`); take **kwargs for the rest.
bridgerl trains on the weighted sum of the functions (task.reward_weights) and evaluates with the
same functions: a completion counts as correct when that sum reaches task.accuracy_threshold.
"""

import re

ANSWER = re.compile(r"#(-?\d+)")


def correct(completions, answer, **kwargs):
    """1.0 when the number after the first '#' is the row's answer, else 0.0."""
    out = []
    for completion, gold in zip(completions, answer):
        found = ANSWER.search(completion)
        out.append(1.0 if found and found.group(1) == str(gold) else 0.0)
    return out


def well_formed(completions, **kwargs):
    """1.0 when the completion is a chain of steps ending in '#<number>', else 0.0 (a format reward)."""
    return [1.0 if re.fullmatch(r"(\d+[-+*]\d+=-?\d+;)*#-?\d+\s*", c) else 0.0 for c in completions]
