"""The task contract: examples, a prompt, and one grader shared by the reward and the evaluation.

A task owns its grader (as in nanochat), so the training reward and the evaluation can never
drift apart: the trainer's reward and `bridgerl eval` both call `task.grade(example, completion)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bridgerl.config import UserError

# Split names every task provides (a split may be empty where a source has none).
RL_TRAIN = "rl_train"  # prompts with a checkable answer (D_RL)
SFT_TRAIN = "sft_train"  # prompts with an expert solution (D_SFT)
TEST = "test"  # in-distribution evaluation
TEST_HARD = "test_hard"  # harder / out-of-distribution evaluation
VAL = "val"  # held-out problems for choosing hyperparameters (never the test split)
SPLITS = (RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, VAL)


class TaskError(UserError):
    """A task could not be built (bad file, malformed row, unknown option). One clear line."""


@dataclass(frozen=True)
class Example:
    """One problem.

    question: the problem text as the task shows it (before any template).
    answer:   the gold final answer (a string the grader understands).
    solution: the expert completion that follows the prompt (SFT target), ending with the
              final answer in the task's format; None where the source has no solution.
    """

    id: str
    question: str
    answer: str
    solution: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


class Task:
    """Base class: subclasses fill `self.splits` and implement `prompt` and `grade`.

    `use_chat_template`: wrap the prompt in the tokenizer's chat template when it has one
    (instruction-tuned models); the embedded testbed uses raw text.
    """

    name: str = "task"
    use_chat_template: bool = False
    # Reward functions replacing `grade` in training and evaluation (task.reward_funcs): a
    # tasks.rewards.RewardSet, set by build_task; None = the task's own grader.
    reward_set: Any = None

    def __init__(self) -> None:
        self.splits: dict[str, list[Example]] = {s: [] for s in SPLITS}

    def split(self, name: str) -> list[Example]:
        if name not in self.splits:
            raise TaskError(f"task {self.name!r} has no split {name!r}; splits: {', '.join(self.splits)}")
        return self.splits[name]

    def prompt(self, example: Example) -> str:
        """The text the model sees before its completion (before chat templating)."""
        raise NotImplementedError

    def grade(self, example: Example, completion: str) -> float:
        """1.0 if the completion's final answer is correct, else 0.0. Deterministic, never raises."""
        raise NotImplementedError

    def data_hint(self, split: str) -> str:
        """One clause saying where `split` comes from (file, columns, rows lacking a solution), for the
        message that refuses an empty or incomplete split; "" when the task has nothing to add."""
        return ""

    def grade_batch(self, examples: list[Example], completions: list[str]) -> list[float]:
        """The evaluation grades, 1.0 or 0.0 (with reward functions: weighted reward >= the threshold)."""
        if self.reward_set is not None:
            return self.reward_set.grade(self, examples, completions)
        return [self.grade(e, c) for e, c in zip(examples, completions, strict=True)]

    def reward_batch(self, examples: list[Example], completions: list[str]) -> list[float]:
        """The training rewards: the weighted sum of the reward functions where set, else the grades."""
        if self.reward_set is not None:
            return self.reward_set.score(self, examples, completions)
        return self.grade_batch(examples, completions)

    def reward_inputs(self, example: Example) -> tuple[Any, dict[str, Any]]:
        """What a reward function sees of an example: its prompt (TRL's `prompts` item) and its columns."""
        columns = {"question": example.question, "answer": example.answer, "solution": example.solution}
        columns.update({k: v for k, v in example.meta.items() if k not in columns})
        return self.prompt(example), columns

    def render(self, example: Example, tokenizer: Any) -> str:
        """The prompt string fed to the model: the prompt, in the chat template if asked and present."""
        text = self.prompt(example)
        if self.use_chat_template and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise TaskError where this task's prompts cannot be rendered with `tokenizer` (before any output)."""


def render_prompt(task: Task, example: Example, tokenizer: Any) -> str:
    """The prompt string fed to the model (Task.render)."""
    return task.render(example, tokenizer)
