"""The rollout-engine interface: prompts in, sampled completions out.

An engine samples from the *current* policy. Trainers call `engine.sync(model)` after every
optimizer step; an engine that reads the live module (HF) does nothing there, one that holds
its own copy of the weights (vLLM) pushes the merged theta + w into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    n: int = 1  # completions per prompt, returned grouped: prompt i owns rows i*n .. i*n+n-1

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Rollout:
    """Completions for `len(prompts) * n` rows, grouped by prompt.

    prompt_ids:      [B, P]  left-padded prompt tokens (pad where prompt_mask is 0)
    prompt_mask:     [B, P]
    completion_ids:  [B, C]  right-padded completion tokens, EOS included when produced
    completion_mask: [B, C]  1 on generated tokens up to and including EOS
    texts:           B decoded completions (special tokens stripped)
    finish_reasons:  B of "stop" (EOS produced) or "length" (hit max_new_tokens)
    sampler_logp:    [B, C] float32 log-prob of each completion token under the engine that
                     sampled it (NaN where it did not say, anything on padding); None from an
                     engine that samples with the trainer's own module (HF), whose log-probs
                     are the trainer's
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]
    finish_reasons: list[str]
    sampler_logp: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.texts)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout: ...

    def sync(self, model: torch.nn.Module) -> None: ...
