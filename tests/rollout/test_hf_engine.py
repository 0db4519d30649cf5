"""The HF generate engine on a tiny random Llama: layout, masks, finish reasons, greedy, cache options."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bridgerl.config import ConfigError
from bridgerl.config_load import load_config
from bridgerl.models.tiny import build_tokenizer
from bridgerl.rollout.base import SamplingParams
from bridgerl.rollout.hf import HFEngine, completion_mask, encode_left_padded

PROMPTS = ["Q:1+2=\nA:", "Q:3+4+5=\nA:", "Q:9=\nA:"]  # different lengths: left padding is exercised


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def tiny_llama(tok, seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=False)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def uniform_llama(tok) -> LlamaForCausalLM:
    """All logits 0: every token (EOS included, 1/25) equally likely, so rows both stop and run out."""
    model = tiny_llama(tok)
    with torch.no_grad():
        model.lm_head.weight.zero_()
    return model


def first_eos(row: torch.Tensor, eos: int) -> int | None:
    hits = (row == eos).nonzero()
    return int(hits[0]) if len(hits) else None


def test_rows_are_grouped_by_prompt_and_prompts_left_padded(tok):
    engine = HFEngine(tiny_llama(tok), tok)
    torch.manual_seed(0)
    r = engine.generate(PROMPTS, SamplingParams(max_new_tokens=6, temperature=1.0, n=4))
    ids, mask = encode_left_padded(tok, PROMPTS)
    assert len(r) == 12 and r.completion_ids.shape[0] == r.completion_mask.shape[0] == 12
    for i in range(len(PROMPTS)):
        for j in range(4):
            assert torch.equal(r.prompt_ids[i * 4 + j], ids[i]) and torch.equal(r.prompt_mask[i * 4 + j], mask[i])
    assert (r.prompt_mask[:, -1] == 1).all()  # left padded: every prompt ends at the last column
    assert (r.prompt_mask[2, :2] == 0).all()  # the 1-operand prompt is shorter than the longest


def test_mask_ends_at_first_eos_and_finish_reasons_follow_it(tok):
    engine = HFEngine(uniform_llama(tok), tok)
    torch.manual_seed(0)
    r = engine.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.0, n=8))
    assert set(r.finish_reasons) == {"stop", "length"}  # the fixture must exercise both
    for row, m, reason, text in zip(r.completion_ids, r.completion_mask, r.finish_reasons, r.texts):
        k = first_eos(row, tok.eos_token_id)
        if reason == "stop":
            assert k is not None and int(m.sum()) == k + 1 and (m[: k + 1] == 1).all() and (m[k + 1:] == 0).all()
            assert (row[k + 1:] == tok.pad_token_id).all()  # padding after EOS
        else:
            assert k is None and int(m.sum()) == 12
        assert text == tok.decode(row[m.bool()], skip_special_tokens=True)


def test_completion_mask_counts_tokens_up_to_and_including_the_first_eos():
    ids = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 0, 0, 0]])
    mask, reasons = completion_mask(ids, {2})
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert reasons == ["stop", "length", "stop"]


def manual_greedy(model, tok, prompt: str, max_new: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_greedy_is_deterministic_and_equals_a_manual_greedy_loop(tok):
    model = tiny_llama(tok, seed=3)
    engine = HFEngine(model, tok)
    params = SamplingParams(max_new_tokens=10, temperature=0.0, n=2)
    a, b = engine.generate(PROMPTS, params), engine.generate(PROMPTS, params)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    for i, prompt in enumerate(PROMPTS):
        expected = manual_greedy(model, tok, prompt, 10)
        for j in range(2):  # the n greedy copies are identical
            row = a.completion_ids[i * 2 + j][a.completion_mask[i * 2 + j].bool()]
            assert row.tolist() == expected


def test_static_cache_gives_the_same_greedy_tokens_as_dynamic(tok):
    model = tiny_llama(tok, seed=4)
    params = SamplingParams(max_new_tokens=10, temperature=0.0)
    dynamic = HFEngine(model, tok).generate(PROMPTS, params)
    static = HFEngine(model, tok, cache_implementation="static").generate(PROMPTS, params)
    assert torch.equal(dynamic.completion_ids, static.completion_ids)
    assert torch.equal(dynamic.completion_mask, static.completion_mask)


def test_shared_prefill_samples_the_same_tokens_as_repeating_each_prompt(tok):
    # left padding and RoPE positions, the rows' order (prompt i owns rows i*n .. i*n+n-1) and the
    # random stream must all match generate's own num_return_sequences path
    model = tiny_llama(tok, seed=6)
    with torch.no_grad():  # sharp logits, so that any change in a row's context changes its samples
        for p in model.parameters():
            p.mul_(10.0 if p.dim() > 1 else 1.0)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, n=4)
    torch.manual_seed(0)
    shared = HFEngine(model, tok).generate(PROMPTS, params)
    torch.manual_seed(0)
    repeated = HFEngine(model, tok, share_prefill=False).generate(PROMPTS, params)
    assert len({tuple(r) for r in shared.completion_ids.tolist()}) > 4  # samples differ within groups
    assert torch.equal(shared.completion_ids, repeated.completion_ids)
    assert torch.equal(shared.completion_mask, repeated.completion_mask)
    assert torch.equal(shared.prompt_ids, repeated.prompt_ids)


def test_shared_prefill_runs_each_prompt_through_the_model_once(tok):
    model = tiny_llama(tok, seed=6)
    shapes: list[tuple[int, int]] = []
    model.model.embed_tokens.register_forward_hook(lambda m, args, out: shapes.append(tuple(args[0].shape)))
    ids, _ = encode_left_padded(tok, PROMPTS)
    P = ids.shape[1]
    HFEngine(model, tok).generate(PROMPTS, SamplingParams(max_new_tokens=3, temperature=1.0, n=4))
    assert shapes[0] == (3, P - 1)  # the prompts, once each, but their last token
    assert all(rows == 12 and width == 1 for rows, width in shapes[1:])  # then one token per row and step
    shapes.clear()
    HFEngine(model, tok, share_prefill=False).generate(PROMPTS, SamplingParams(max_new_tokens=3, temperature=1.0, n=4))
    assert shapes[0] == (12, P)  # generate's own path: every prompt 4 times


def test_generate_leaves_the_training_mode_as_it_was(tok):
    model = tiny_llama(tok).train()
    HFEngine(model, tok).generate(PROMPTS[:1], SamplingParams(max_new_tokens=2, temperature=0.0))
    assert model.training


def test_from_config_reads_the_rollout_options_and_rejects_compile_without_static_cache(tok):
    model = tiny_llama(tok)
    cfg = load_config()
    engine = HFEngine.from_config(cfg, model, tok)
    assert (engine.cache_implementation, engine.share_prefill) == ("dynamic", True)  # the defaults
    cfg.rollout.hf_share_prefill = False
    assert not HFEngine.from_config(cfg, model, tok).share_prefill
    cfg.rollout.hf_cache_implementation, cfg.rollout.hf_compile = "static", True
    engine = HFEngine.from_config(cfg, model, tok)
    assert (engine.cache_implementation, engine.compile) == ("static", True)
    cfg.rollout.hf_cache_implementation = "dynamic"
    with pytest.raises(ConfigError, match="hf_compile"):
        HFEngine.from_config(cfg, model, tok)
    cfg.rollout.hf_cache_implementation = "paged"
    with pytest.raises(ConfigError, match="hf_cache_implementation"):
        HFEngine.from_config(cfg, model, tok)


@pytest.mark.slow
def test_compiled_static_decode_gives_the_same_greedy_tokens(tok):
    model = tiny_llama(tok, seed=5)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    dynamic = HFEngine(model, tok).generate(PROMPTS, params)
    compiled = HFEngine(model, tok, cache_implementation="static", compile=True).generate(PROMPTS, params)
    assert torch.equal(dynamic.completion_ids, compiled.completion_ids)
