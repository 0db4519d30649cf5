"""Adapter for the `reasoning-gym` package: procedural tasks graded by each dataset's own verifier.

Splits (sizes and seeds from GymTaskConfig):
- rl_train:  `cfg.size` entries of `cfg.rl_dataset`, seed `cfg.seed`.
- sft_train: the entries of `cfg.sft_dataset` (the rl_train entries when it is the same dataset)
             that carry a worked solution. Of the ~100 reasoning-gym datasets only `gsm_symbolic`
             does (`metadata["answer_cot"]`, GSM8K-style steps ending in `#### N`); elsewhere
             `metadata["solution"]` is the final answer, not a worked solution, so for every other
             dataset the SFT split is EMPTY. A worked solution whose `####` value fails the
             dataset's own check is dropped rather than taught.
- test:      `cfg.test_size` entries of `cfg.rl_dataset` from a seed far from the training seeds
             (some datasets seed entry i with seed + i), with any question seen in training
             removed, so the split is disjoint from rl_train and sft_train.
- test_hard: the same from `cfg.hard_dataset`, when set.
- val:       `cfg.test_size` entries of `cfg.rl_dataset` from a third far seed, disjoint from the
             training splits and test (for choosing hyperparameters).

Prompt: the paper's boxed prompt (the dataset's question, then the boxed suffix). Grading takes
the completion's final answer as the math task does (last `\\boxed{}`, else the last non-empty
line) and calls the dataset's `score_answer(answer, entry)`; a score of 1.0 grades 1.0 and
anything lower 0.0 (reasoning-gym gives partial credit, e.g. 0.01 for a wrong number, which would
blur the group advantages). A verifier that raises grades 0.0. There is no timeout: the
verifiers are plain Python over short strings.
"""

from __future__ import annotations

from typing import Any

from bridgerl.config import GymTaskConfig
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, VAL, Example, Task, TaskError
from bridgerl.tasks.grading import extract_answer
from bridgerl.tasks.math import PROMPT_SUFFIX, strip_calc_notes

# metadata keys holding a worked (step-by-step) solution, by dataset
SOLUTION_KEYS = ("answer_cot",)
# Seed offsets of the evaluation splits: far beyond any training index, see the module doc.
TEST_SEED_OFFSET = 1_000_003
HARD_SEED_OFFSET = 2_000_029
VAL_SEED_OFFSET = 3_000_017


def _reasoning_gym() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise TaskError("task 'gym' needs the reasoning-gym package; pip install 'bridgerl[gym]' (or reasoning-gym)") from None
    return reasoning_gym


def _score(dataset: Any, answer: str | None, entry: dict) -> float:
    try:
        return float(dataset.score_answer(answer=answer, entry=entry))
    except Exception:  # a verifier's bug or odd input grades 0, never crashes the trainer
        return 0.0


def worked_solution(dataset: Any, entry: dict) -> str | None:
    """The entry's worked solution ending in `\\boxed{answer}`, or None where it has none (or a wrong one)."""
    metadata = entry.get("metadata") or {}
    cot = next((metadata[k] for k in SOLUTION_KEYS if isinstance(metadata.get(k), str) and metadata[k].strip()), None)
    if cot is None:
        return None
    body, sep, tail = cot.rpartition("####")
    if not sep:
        body = cot
    elif _score(dataset, tail.strip(), entry) < 1.0:
        return None
    body = strip_calc_notes(body).rstrip()
    final = f"The final answer is \\boxed{{{entry['answer']}}}."
    return f"{body}\n{final}" if body else final


class GymTask(Task):
    """reasoning-gym datasets behind the Task contract (see the module docstring for the splits)."""

    name = "gym"
    use_chat_template = True

    def __init__(self, cfg: GymTaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        # dataset name -> a dataset object; its verifier depends on the name and default config only
        self._datasets: dict[str, Any] = {}
        rl = self._examples(RL_TRAIN, cfg.rl_dataset, cfg.size, cfg.seed)
        self.splits[RL_TRAIN] = rl
        if cfg.sft_dataset == cfg.rl_dataset:  # the same problems: SFT sees their worked solutions
            sft_source = rl
        else:
            sft_source = self._examples(SFT_TRAIN, cfg.sft_dataset, cfg.size, cfg.seed)
        self.splits[SFT_TRAIN] = [e for e in sft_source if e.solution is not None]
        seen = {e.question for e in rl} | {e.question for e in sft_source}
        self.splits[TEST] = self._examples(TEST, cfg.rl_dataset, cfg.test_size, cfg.seed + TEST_SEED_OFFSET, seen)
        if cfg.hard_dataset:
            self.splits[TEST_HARD] = self._examples(
                TEST_HARD, cfg.hard_dataset, cfg.test_size, cfg.seed + HARD_SEED_OFFSET, seen
            )
        seen |= {e.question for e in self.splits[TEST]}
        self.splits[VAL] = self._examples(VAL, cfg.rl_dataset, cfg.test_size, cfg.seed + VAL_SEED_OFFSET, seen)

    def _examples(self, split: str, name: str, size: int, seed: int, exclude: set[str] | None = None) -> list[Example]:
        rg = _reasoning_gym()
        # Generate spare entries when filtering, so `size` survive the removal of seen questions.
        spare = size if exclude else 0
        try:
            dataset = rg.create_dataset(name, size=size + spare, seed=seed)
        except Exception as exc:  # reasoning-gym raises ValueError for unknown names, others for bad configs
            raise TaskError(
                f"reasoning-gym could not build dataset {name!r} ({exc}); see reasoning_gym.factory.DATASETS for names"
            ) from None
        self._datasets.setdefault(name, dataset)
        examples = []
        for index in range(len(dataset)):
            if len(examples) >= size:
                break
            entry = dataset[index]
            if exclude and entry["question"] in exclude:
                continue
            examples.append(
                Example(
                    id=f"{name}/{split}#{index}",
                    question=entry["question"],
                    answer=str(entry["answer"]),
                    solution=worked_solution(dataset, entry),
                    meta={"dataset": name, "entry": entry},
                )
            )
        return examples

    def prompt(self, example: Example) -> str:
        return f"{example.question}\n{PROMPT_SUFFIX}"

    def grade(self, example: Example, completion: str) -> float:
        dataset = self._datasets.get(example.meta.get("dataset", ""))
        if dataset is None or not isinstance(completion, str):
            return 0.0
        answer = extract_answer(completion)
        if answer is None:
            return 0.0
        return 1.0 if _score(dataset, answer, example.meta["entry"]) >= 1.0 else 0.0

