"""Rollouts with transformers' own `generate` (KV cache, left padding): CPU, tests, small GPUs."""

from __future__ import annotations

from typing import Any

import torch

from bridgerl.models.lora import merge_cache
from bridgerl.rollout.base import Rollout, SamplingParams


def completion_mask(completion_ids: torch.Tensor, eos_ids: set[int]) -> tuple[torch.Tensor, list[str]]:
    """[B, C] mask of real completion tokens (up to and including the first EOS) and finish reasons."""
    is_eos = torch.zeros_like(completion_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= completion_ids == e
    # Tokens after the first EOS are padding: cumulative count of EOS *before* each position.
    seen_before = torch.cumsum(is_eos.int(), dim=1) - is_eos.int()
    mask = (seen_before == 0).long()
    reasons = ["stop" if row.any() else "length" for row in is_eos]
    return mask, reasons


class HFEngine:
    """Samples from the live module: no weight sync needed (sync is a no-op)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        if gen_eos is not None:  # chat models stop at an end-of-turn token too
            self.eos_ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])

    def sync(self, model: torch.nn.Module) -> None:  # the live module is the policy
        self.model = model

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=_adds_bos(tok, prompts[0]))
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        return enc["input_ids"].to(device), enc["attention_mask"].to(device)

    @torch.no_grad()
    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        flags: dict[str, Any] = {"do_sample": False}
        if not params.greedy:  # pass only the flags that apply (transformers warns otherwise)
            flags = {"do_sample": True, "temperature": params.temperature, "top_k": 0}
            if params.top_p < 1.0:
                flags["top_p"] = params.top_p
        was_training = self.model.training
        self.model.eval()
        try:
            with merge_cache(self.model):
                out = self.model.generate(
                    input_ids=prompt_ids,
                    attention_mask=prompt_mask,
                    max_new_tokens=params.max_new_tokens,
                    num_return_sequences=params.n,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=sorted(self.eos_ids),
                    use_cache=True,
                    **flags,
                )
        finally:
            self.model.train(was_training)
        P = prompt_ids.shape[1]
        completion_ids = out[:, P:]
        mask, reasons = completion_mask(completion_ids, self.eos_ids)
        completion_ids = completion_ids.masked_fill(mask == 0, self.tokenizer.pad_token_id)
        texts = self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        # generate repeats each prompt n times consecutively: rows i*n .. i*n+n-1 are prompt i's group.
        return Rollout(
            prompt_ids=prompt_ids.repeat_interleave(params.n, dim=0),
            prompt_mask=prompt_mask.repeat_interleave(params.n, dim=0),
            completion_ids=completion_ids,
            completion_mask=mask,
            texts=texts,
            finish_reasons=reasons,
        )


def _adds_bos(tokenizer: Any, sample: str) -> bool:
    """Add the tokenizer's special tokens unless the prompt (e.g. a chat template) already starts with BOS."""
    bos = tokenizer.bos_token
    return not (bos and sample.startswith(bos))
