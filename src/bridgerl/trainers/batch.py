"""Token batches (prompt left-padded, completion right-padded) and their per-token log-probs.

One layout serves rollouts, SFT demonstrations and LUFFY's mixed groups, so every recipe
computes log-probs with the same function.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from bridgerl.algos import entropy_from_logits, token_logprobs
from bridgerl.models.kv_cache import left_padded_positions, output_cache
from bridgerl.models.lora import merge_cache


@dataclass
class TokenBatch:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, C] right-padded
    completion_mask: torch.Tensor  # [B, C] 1 on tokens that are scored (and trained)

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, rows: slice | torch.Tensor) -> TokenBatch:
        return TokenBatch(*(getattr(self, f.name)[rows] for f in fields(self)))

    def micro_batches(self, rows: int | None, tokens: int | None) -> Iterator[tuple[slice | torch.Tensor, TokenBatch]]:
        """(row index, micro-batch) pairs that cover the batch once; `row index` selects the micro-batch's
        rows from any per-row tensor of the whole batch.

        tokens None: consecutive chunks of `rows` rows (None = the whole batch), widths unchanged.
        tokens N: rows sorted by real length and packed into micro-batches of at most N padded tokens
        (and `rows` rows), each trimmed to its own longest prompt and completion, so that short rows
        stop paying for long ones (verl's dynamic batch size). Padding is masked out of attention and
        positions count real tokens only, so each row's log-probs are the same up to float rounding.
        """
        if tokens is None:
            if not rows or rows >= len(self):
                yield slice(0, len(self)), self
                return
            for start in range(0, len(self), rows):
                part = slice(start, start + rows)
                yield part, self.select(part)
            return
        p_len, c_len = self.prompt_mask.sum(1), _real_width(self.completion_mask)
        order = torch.argsort(p_len + c_len, stable=True).tolist()
        group: list[int] = []
        p_max = c_max = 0
        for i in order:
            p, c = int(p_len[i]), int(c_len[i])
            width = max(p_max, p) + max(c_max, c)
            if group and ((len(group) + 1) * width > tokens or (rows and len(group) >= rows)):
                yield self._packed(group, p_max, c_max)
                group, p_max, c_max = [], 0, 0
            group.append(i)
            p_max, c_max = max(p_max, p), max(c_max, c)
        if group:
            yield self._packed(group, p_max, c_max)

    def _packed(self, group: list[int], p_width: int, c_width: int) -> tuple[torch.Tensor, TokenBatch]:
        index = torch.tensor(group, dtype=torch.long, device=self.prompt_ids.device)
        part = self.select(index)
        P, C = self.prompt_ids.shape[1], max(1, c_width)
        keep = slice(P - p_width, P)  # left padding: the real prompt tokens are the last ones
        return index, TokenBatch(part.prompt_ids[:, keep], part.prompt_mask[:, keep],
                                 part.completion_ids[:, :C], part.completion_mask[:, :C])

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())


def _real_width(mask: torch.Tensor) -> torch.Tensor:
    """[B] columns up to and including each row's last nonzero entry of a right-padded mask [B, C]."""
    cols = torch.arange(1, mask.shape[1] + 1, device=mask.device)
    return ((mask != 0) * cols).amax(1) if mask.shape[1] else torch.zeros(mask.shape[0], dtype=torch.long)


def widen(t: torch.Tensor, width: int, value: float = 0.0) -> torch.Tensor:
    """[B, C'] -> [B, width] padded on the right with `value` (a trimmed micro-batch's per-token values)."""
    return F.pad(t, (0, width - t.shape[1]), value=value)


def from_rollout(rollout: Any) -> TokenBatch:
    return TokenBatch(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)


def _pad(seqs: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def prompt_special_tokens(tokenizer: Any, prompt: str) -> bool:
    """Whether tokenizing the prompt adds BOS: not where the chat template already wrote it."""
    bos = tokenizer.bos_token
    return not (bos and prompt.startswith(bos))


def encode_pairs(tokenizer: Any, prompts: list[str], completions: list[str], *, add_eos: bool = True,
                 max_completion_tokens: int | None = None, device: torch.device | str = "cpu") -> TokenBatch:
    """Tokenize prompt / completion pairs separately (the prompt with BOS, the completion + EOS)."""
    prompt_tok = [tokenizer(p, add_special_tokens=prompt_special_tokens(tokenizer, p))["input_ids"] for p in prompts]
    comp_tok = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in completions]
    if add_eos:
        comp_tok = [c + [tokenizer.eos_token_id] for c in comp_tok]
    if max_completion_tokens:
        comp_tok = [c[:max_completion_tokens] for c in comp_tok]
    pad = tokenizer.pad_token_id
    p_ids, p_mask = _pad(prompt_tok, pad, left=True)
    c_ids, c_mask = _pad(comp_tok, pad, left=False)
    return TokenBatch(p_ids.to(device), p_mask.to(device), c_ids.to(device), c_mask.to(device))


def concat(batches: list[TokenBatch], pad_id: int) -> TokenBatch:
    """Stack batches whose prompt / completion widths differ (re-padding left and right)."""
    P = max(b.prompt_ids.shape[1] for b in batches)
    C = max(b.completion_ids.shape[1] for b in batches)

    def grow(t: torch.Tensor, width: int, left: bool, value: int) -> torch.Tensor:
        extra = width - t.shape[1]
        return F.pad(t, (extra, 0) if left else (0, extra), value=value)

    return TokenBatch(
        torch.cat([grow(b.prompt_ids, P, True, pad_id) for b in batches]),
        torch.cat([grow(b.prompt_mask, P, True, 0) for b in batches]),
        torch.cat([grow(b.completion_ids, C, False, pad_id) for b in batches]),
        torch.cat([grow(b.completion_mask, C, False, 0) for b in batches]),
    )


def sequence_logprobs(model: torch.nn.Module, batch: TokenBatch, *, with_entropy: bool = False,
                      entropy_grad: bool = False, share_prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of the completion tokens [B, C] (and, with_entropy, their entropies [B, C]).

    entropy_grad: the entropies keep their graph, so an entropy bonus in the loss reaches the
    weights. That holds a float32 [C, V] softmax per row for the backward pass, so ask for it only
    when the bonus is on; otherwise they are computed without grad, as a metric.
    share_prompts: rows with the same prompt (a rollout group's G samples) run it through the model
    once (`shared_prompt_logits`); the same log-probs up to float rounding.
    """
    input_ids = torch.cat([batch.prompt_ids, batch.completion_ids], dim=1)
    attention = torch.cat([batch.prompt_mask, batch.completion_mask.clamp(max=1)], dim=1)
    position_ids = left_padded_positions(attention)  # real tokens only, as generate counts them
    C = batch.completion_ids.shape[1]
    logits = shared_prompt_logits(model, batch, input_ids, attention, position_ids) if share_prompts else None
    if logits is None:
        # logits_to_keep: the LM head runs only on the C positions that predict completion tokens.
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                       logits_to_keep=C + 1, use_cache=False).logits[:, :-1]  # [B, C, V]
    logp = token_logprobs(logits, batch.completion_ids)
    entropy = None
    if with_entropy and entropy_grad:
        entropy = entropy_from_logits(logits)
    elif with_entropy:
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())
    return logp, entropy


def shared_prompt_logits(model: torch.nn.Module, batch: TokenBatch, input_ids: torch.Tensor,
                         attention: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor | None:
    """[B, C, V] logits of the completion positions, each distinct prompt run through the model once.

    The prompts but their last token go through the model once per distinct prompt, with its KV cache
    kept (with its graph); the cache is indexed out to the B rows, and the rows' last prompt token and
    completion (but the last token, whose logits are unused) run on top of it. Gradients reach the
    weights through both passes, and through the cache each prompt gathers its G rows' gradients.
    The two passes share each LoRA layer's merged weight (`merge_cache(grad=True)`). None where no
    two rows share a prompt, or the model's cache cannot be indexed (the caller runs the plain pass).
    input_ids / attention / position_ids: [B, P + C], as the plain pass builds them.
    """
    B, P = batch.prompt_ids.shape
    C = batch.completion_ids.shape[1]
    if P < 2:
        return None
    # distinct (ids, mask) rows: a pad id that is also a real token must not merge two prompts
    distinct, inverse = torch.unique(torch.cat([batch.prompt_ids, batch.prompt_mask], dim=1), dim=0,
                                     return_inverse=True)
    if len(distinct) == B:
        return None
    first = torch.full((len(distinct),), B, dtype=torch.long, device=inverse.device).scatter_reduce(
        0, inverse, torch.arange(B, device=inverse.device), reduce="amin")  # each prompt's first row
    with merge_cache(model, grad=True):
        prefix = model(input_ids=input_ids[first, :P - 1], attention_mask=attention[first, :P - 1],
                       position_ids=position_ids[first, :P - 1], use_cache=True, logits_to_keep=1)
        key, cache = output_cache(prefix)
        if not hasattr(cache, "batch_select_indices"):  # a legacy tuple cache (older transformers)
            return None
        cache.batch_select_indices(inverse)  # [U, ...] -> [B, ...], differentiable indexing
        window = slice(P - 1, P + C - 1)  # the last prompt token and the completion but its last token
        return model(input_ids=input_ids[:, window], attention_mask=attention[:, :P + C - 1],
                     position_ids=position_ids[:, window], use_cache=True, logits_to_keep=0,
                     **{key: cache}).logits  # [B, C, V]
