"""Length-packed micro-batches (train.micro_batch_tokens): every row once, within the budget, trimmed,
and each row's log-probs as in the whole padded batch."""

from __future__ import annotations

import torch

from bridgerl.trainers.batch import encode_pairs, sequence_logprobs, widen

from conftest import tiny_llama

PROMPTS = ["1+2", "12+30+4", "7", "3+4+5+6+7", "9*9", "2"]
COMPLETIONS = ["3", "12+30=42;42+4=46;#46", "#7", "3+4=7;#7", "81", "2+0=2;2+0=2;2+0=2;#2"]


def _batch(tokenizer):
    return encode_pairs(tokenizer, PROMPTS, COMPLETIONS)


def test_packed_micro_batches_cover_every_row_once_within_the_token_budget(tokenizer):
    batch = _batch(tokenizer)
    seen = []
    for rows, part in batch.micro_batches(None, 40):
        seen += rows.tolist()
        width = part.prompt_ids.shape[1] + part.completion_ids.shape[1]
        assert len(part) == 1 or len(part) * width <= 40
        # trimmed: some row fills the first prompt column and the last completion column
        assert part.prompt_mask[:, 0].any() and part.completion_mask[:, -1].any()
    assert sorted(seen) == list(range(len(PROMPTS)))
    assert len(seen) > 2  # the budget split the batch


def test_packed_micro_batches_hold_at_most_micro_batch_size_rows(tokenizer):
    parts = [part for _, part in _batch(tokenizer).micro_batches(2, 10_000)]
    assert [len(p) for p in parts] == [2, 2, 2]


def test_packed_rows_are_sorted_by_length_so_short_rows_travel_together(tokenizer):
    batch = _batch(tokenizer)
    rows, first = next(iter(batch.micro_batches(2, 10_000)))
    assert set(rows.tolist()) == {0, 2}  # "1+2" -> "3" and "7" -> "#7", the two shortest rows
    assert first.prompt_ids.shape[1] < batch.prompt_ids.shape[1] / 2
    assert first.completion_ids.shape[1] < batch.completion_ids.shape[1] / 4


def test_packed_log_probs_equal_the_whole_batch_ones(tokenizer):
    batch, model = _batch(tokenizer), tiny_llama(tokenizer)
    with torch.no_grad():
        whole, _ = sequence_logprobs(model, batch)
        packed = torch.zeros_like(whole)
        for rows, part in batch.micro_batches(None, 30):
            logp, _ = sequence_logprobs(model, part)
            packed[rows] = widen(logp, whole.shape[1])
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(packed[mask], whole[mask], atol=1e-10, rtol=0)


def test_without_a_token_budget_chunks_are_consecutive_rows_of_full_width(tokenizer):
    batch = _batch(tokenizer)
    parts = list(batch.micro_batches(4, None))
    assert [rows for rows, _ in parts] == [slice(0, 4), slice(4, 8)]
    assert all(p.completion_ids.shape[1] == batch.completion_ids.shape[1] for _, p in parts)
