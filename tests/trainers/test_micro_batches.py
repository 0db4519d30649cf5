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


def test_shared_prompts_give_each_rows_log_probs_entropies_and_gradients(tokenizer):
    """Rows of a group share their prompt's pass (train.share_prompts): the same log-probs, entropies
    (with their graph, as the entropy bonus needs) and weight gradients as every row run whole, with
    groups of unequal prompt lengths (left padding) and a prompt of its own."""
    prompts = ["12+30+4"] * 3 + ["7"] * 2 + ["3+4+5+6+7"]
    completions = ["46", "12+30=42;42+4=46;#46", "#4", "#7", "7+0=7;#7", "#25"]
    batch = encode_pairs(tokenizer, prompts, completions)
    model = tiny_llama(tokenizer, seed=2)
    results = []
    for share in (False, True):
        model.zero_grad()
        logp, entropy = sequence_logprobs(model, batch, with_entropy=True, entropy_grad=True, share_prompts=share)
        ((logp * batch.completion_mask).sum() + (entropy * batch.completion_mask).sum()).backward()
        results.append((logp.detach(), entropy.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (lp_a, ent_a, grad_a), (lp_b, ent_b, grad_b) = results
    mask = batch.completion_mask.bool()
    torch.testing.assert_close(lp_b[mask], lp_a[mask], atol=1e-10, rtol=0)
    torch.testing.assert_close(ent_b[mask], ent_a[mask], atol=1e-10, rtol=0)
    for n in grad_a:  # the log-prob and entropy kernels work in float32: their rounding, summed differently
        torch.testing.assert_close(grad_b[n], grad_a[n], atol=1e-7, rtol=1e-6)


def test_shared_prompts_run_each_distinct_prompt_once(tokenizer):
    prompts = ["12+30+4"] * 3 + ["7"] * 2 + ["3+4+5+6+7"]
    batch = encode_pairs(tokenizer, prompts, ["1", "2", "3", "4", "5", "6"])
    model = tiny_llama(tokenizer, seed=2)
    shapes = []
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    sequence_logprobs(model, batch, share_prompts=True)
    P, C = batch.prompt_ids.shape[1], batch.completion_ids.shape[1]
    assert shapes == [(3, P - 1), (6, C)]  # 3 distinct prompts, then every row's last prompt token + completion
    shapes.clear()
    distinct = encode_pairs(tokenizer, PROMPTS, COMPLETIONS)
    sequence_logprobs(model, distinct, share_prompts=True)  # nothing to share: the plain pass
    assert shapes == [(len(PROMPTS), distinct.prompt_ids.shape[1] + distinct.completion_ids.shape[1])]
