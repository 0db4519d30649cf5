"""Examples that cannot fit the model's context, found when a run starts (any task, any split it uses).

A prompt of 5,000 tokens for a model with a 128-token context would otherwise train with only a
transformers warning (or fail mid-run on models with learned positions). What must fit:
an RL prompt plus rollout.max_new_tokens; an SFT prompt plus its solution and EOS (as
trainers/batch.encode_pairs tokenizes them; LUFFY also does this for RL prompts); a test prompt
plus the evaluation's new tokens. train.overlong=drop leaves such examples out instead, saying
how many per split.
"""

from __future__ import annotations

from typing import Any

from bridgerl.config import Config
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, Example, Task, TaskError, render_prompt
from bridgerl.trainers.batch import prompt_special_tokens
from bridgerl.trainers.state import NEEDS_RL_SOLUTIONS, USES_RL, USES_SFT


def context_length(model: Any, cfg: Config) -> int | None:
    """Positions the model can attend over (None: the config does not say)."""
    n = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if n and cfg.rollout.engine == "vllm" and cfg.rollout.vllm_max_model_len:
        n = min(n, cfg.rollout.vllm_max_model_len)
    return n


def _needs(cfg: Config) -> list[tuple[str, bool, int]]:
    """(split, with its solution, new tokens generated after the prompt) for every split the run reads."""
    eval_new = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    out = []
    if cfg.recipe in USES_RL:
        out.append((RL_TRAIN, False, cfg.rollout.max_new_tokens))
    if cfg.recipe in NEEDS_RL_SOLUTIONS:
        out.append((RL_TRAIN, True, 0))
    if cfg.recipe in USES_SFT:
        out.append((SFT_TRAIN, True, 0))
    return out + [(TEST, False, eval_new), (TEST_HARD, False, eval_new)]


class _Counter:
    """Token counts, each distinct text tokenized once (RL and SFT splits often share problems)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer, self.cache = tokenizer, {}

    def __call__(self, texts: list[str], special: list[bool]) -> list[int]:
        todo = sorted({(t, s) for t, s in zip(texts, special) if (t, s) not in self.cache})
        for flag in (True, False):
            batch = [t for t, s in todo if s is flag]
            if batch:
                ids = self.tokenizer(batch, add_special_tokens=flag, verbose=False)["input_ids"]
                self.cache.update({(t, flag): len(i) for t, i in zip(batch, ids)})
        return [self.cache[(t, s)] for t, s in zip(texts, special)]


def check_lengths(cfg: Config, task: Task, tokenizer: Any, model: Any, *, say: Any = None) -> None:
    """Raise TaskError naming the first example too long for the context (train.overlong=error), or
    remove every such example from its split and report the counts through `say` (=drop)."""
    ctx = context_length(model, cfg)
    if not ctx:
        return
    count = _Counter(tokenizer)
    dropped: dict[str, tuple[int, int]] = {}
    for split, with_solution, new_tokens in _needs(cfg):
        examples = task.split(split)
        if not examples:
            continue
        prompts = [render_prompt(task, e, tokenizer) for e in examples]
        p_len = count(prompts, [prompt_special_tokens(tokenizer, p) for p in prompts])
        s_len = count([e.solution or "" for e in examples], [False] * len(examples)) if with_solution else None
        need = [p + (s_len[i] + 1 if s_len is not None else new_tokens) for i, p in enumerate(p_len)]
        over = [i for i, n in enumerate(need) if n > ctx]
        if not over:
            continue
        if cfg.train.overlong == "error":
            i = over[0]
            raise TaskError(_message(split, examples[i], p_len[i], s_len[i] if s_len is not None else None,
                                     new_tokens, ctx, len(over), len(examples), max(p_len), cfg))
        keep = set(range(len(examples))) - set(over)
        task.splits[split] = [e for i, e in enumerate(examples) if i in keep]
        dropped[split] = (len(over), len(examples))
    if dropped and say is not None:
        parts = ", ".join(f"{n} of {total} {split}" for split, (n, total) in dropped.items())
        say(f"train.overlong=drop: left out {parts} examples longer than the model's context ({ctx} tokens)")


def _message(split: str, e: Example, prompt: int, solution: int | None, new_tokens: int, ctx: int, n_over: int,
             n: int, longest_prompt: int, cfg: Config) -> str:
    where = f"split {split!r}, example {e.id!r}: "
    if solution is not None:
        what, fix = f"its prompt ({prompt} tokens) + solution ({solution} tokens + EOS)", "shorten it"
    else:
        knob = "rollout.max_new_tokens" if split == RL_TRAIN or not cfg.eval.max_new_tokens else "eval.max_new_tokens"
        what = f"its prompt ({prompt} tokens) + {knob} ({new_tokens})"
        if n_over == n and ctx > longest_prompt:  # the generation budget, not the data, is what does not fit
            return (f"{where}{what} exceeds the context of {cfg.model.name_or_path!r} ({ctx} tokens), as do all "
                    f"{n} in {split}; lower {knob} to at most {ctx - longest_prompt}")
        fix = f"shorten it or lower {knob}"
    others = f" (and {n_over - 1} more in {split})" if n_over > 1 else ""
    return (f"{where}{what} exceeds the context of {cfg.model.name_or_path!r} ({ctx} tokens){others}; {fix}, "
            f"or leave such examples out with train.overlong=drop")
