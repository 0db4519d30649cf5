"""The vLLM boundary's pure pieces on CPU (rollout/vllm_io.py and the construction helpers of
rollout/vllm.py): weight names and values, the tied-LoRA refusal, sampling flags, the output
layout with the sampled tokens' log-probs, LLM arguments, the colocation environment. The
engine itself runs against the stand-in vLLM in test_vllm_engine.py; test_vllm_gpu.py is the
real run for CUDA machines."""

from __future__ import annotations

import math
import os
import socket
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from bridgerl.config import ConfigError
from bridgerl.config_load import load_config
from bridgerl.models.lora import attach_lora, lora_modules, merged_state_dict, split_params
from bridgerl.models.tiny import build_tokenizer
from bridgerl.rollout.base import SamplingParams
from bridgerl.rollout.hf import completion_mask, encode_left_padded
from bridgerl.rollout.vllm import (
    BATCHED_TOKENS,
    LOGPROBS_MODE,
    _colocate_env,
    _inner_model,
    default_max_model_len,
    import_vllm,
    llm_kwargs,
    max_prompt_tokens,
)
from bridgerl.rollout.vllm_io import (
    _full,
    check_tied_lora,
    rollout_from_outputs,
    to_vllm_sampling_kwargs,
    token_logprob,
    vllm_name,
    vllm_weight_items,
    weights_key,
)
from fake_vllm import CompletionOutput, Logprob, RequestOutput

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPTS = ["Q:1+2=\nA:", "Q:3+4+5=\nA:"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def llama_config(tok, tied: bool = False) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       tie_word_embeddings=tied)


def lora_llama(tok, tied: bool = False, seed: int = 0) -> LlamaForCausalLM:
    """A tiny Llama with our LoRA on every linear layer and a non-zero B (so w changes the weights)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(tok, tied))
    attach_lora(model, TARGETS, r=4, alpha=8.0)
    with torch.no_grad():
        for _, layer in lora_modules(model):
            layer.lora_B.weight.normal_(0, 0.05)
    return model.eval()


class Wrapper(nn.Module):
    """Stands in for DDP / FSDP1 / checkpoint wrappers: the model under a given attribute name."""

    def __init__(self, attr: str, inner: nn.Module) -> None:
        super().__init__()
        setattr(self, attr, inner)


# -- weights ------------------------------------------------------------------------------------

@pytest.mark.parametrize("tied", [False, True])
def test_every_name_sent_is_a_plain_transformers_parameter_and_none_is_missing(tok, tied):
    model = lora_llama(tok, tied)
    names = [n for n, _ in vllm_weight_items(model)]
    plain = LlamaForCausalLM(llama_config(tok, tied))
    assert len(names) == len(set(names))
    assert not [n for n in names if "lora_" in n or "base_layer" in n]
    assert set(names) <= set(plain.state_dict())
    assert set(names) == {n for n, _ in plain.named_parameters()}  # tied lm_head sent once, as embeddings


def test_merged_values_are_w_plus_scaled_b_times_a(tok):
    model = lora_llama(tok)
    items = dict(vllm_weight_items(model))
    for name, layer in lora_modules(model):
        expected = layer.base_layer.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
        assert torch.allclose(items[f"{name}.weight"], expected, atol=0, rtol=0)
        assert not torch.equal(items[f"{name}.weight"], layer.base_layer.weight)  # w really contributes
    reference = merged_state_dict(model)  # the deployment merge: a second implementation
    for name, value in items.items():
        assert torch.equal(value, reference[name]), name


def test_the_sent_weights_reproduce_the_policy_in_a_plain_model(tok):
    model = lora_llama(tok)
    plain = LlamaForCausalLM(llama_config(tok)).eval()
    plain.load_state_dict(dict(vllm_weight_items(model)), strict=False)
    ids = tok(PROMPTS[1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-5)


def test_computing_merged_weights_leaves_theta_and_w_bitwise_unchanged(tok):
    # No in-place merge / unmerge (W += sBA; W -= sBA would not round-trip exactly in floats).
    model = lora_llama(tok)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _, value in vllm_weight_items(model):
        value.sum()
    theta, lora = split_params(model)
    assert theta and lora
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


@pytest.mark.parametrize("attr", ["module", "_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"])
def test_wrapper_prefixes_are_stripped(tok, attr):
    model = lora_llama(tok)
    plain = list(vllm_weight_items(model))
    wrapped = list(vllm_weight_items(Wrapper("module", Wrapper(attr, model))))  # e.g. DDP around FSDP
    assert [n for n, _ in wrapped] == [n for n, _ in plain]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(wrapped, plain))  # LoRA still merged
    name = "module._fsdp_wrapped_module.model.layers.0.self_attn.q_proj.base_layer.weight"
    assert vllm_name(name) == "model.layers.0.self_attn.q_proj.weight"


# -- sampling flags -------------------------------------------------------------------------------

def test_sampling_flags_match_the_hf_engine():
    kw = to_vllm_sampling_kwargs(SamplingParams(max_new_tokens=32, temperature=0.7, top_p=0.9, n=8), {7, 2})
    assert kw == {"n": 8, "temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "stop_token_ids": [2, 7],
                  "logprobs": 0, "detokenize": False}  # the sampled token's log-prob only; our tokenizer decodes


def test_greedy_asks_for_one_completion_at_temperature_zero():
    kw = to_vllm_sampling_kwargs(SamplingParams(max_new_tokens=5, temperature=0.0, top_p=0.5, n=4), {2})
    assert (kw["n"], kw["temperature"], kw["top_p"], kw["max_tokens"]) == (1, 0.0, 1.0, 5)


# -- outputs -> Rollout -------------------------------------------------------------------------------

def completion(index, token_ids, finish_reason, text="", stop_reason=None, logps=None):
    """vLLM's CompletionOutput; logps: the sampled tokens' log-probs, as vLLM reports them for logprobs=0."""
    logprobs = None if logps is None else [{t: Logprob(lp, rank=1)} for t, lp in zip(token_ids, logps)]
    return CompletionOutput(index, text, list(token_ids), None if logps is None else sum(logps), logprobs,
                            finish_reason=finish_reason, stop_reason=stop_reason)


def request(*completions):
    return RequestOutput("0", None, [], None, list(completions), True)


def test_rollout_layout_masks_and_finish_reasons(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt_ids, prompt_mask = encode_left_padded(tok, PROMPTS)
    outputs = [
        request(completion(1, [6, 7, 8, 9], "length", "3456"),  # out of index order on purpose
                completion(0, [5, eos], "stop", "2")),
        request(completion(0, [5], "stop", "2", stop_reason=eos),  # stop token left out of token_ids
                completion(1, [9, 9, 9, 9], "length", "6666")),
    ]
    r = rollout_from_outputs(outputs, prompt_ids, prompt_mask, n=2, eos_ids={eos}, pad_id=pad)
    assert r.completion_ids.tolist() == [[5, eos, pad, pad], [6, 7, 8, 9], [5, eos, pad, pad], [9, 9, 9, 9]]
    assert r.completion_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert r.finish_reasons == ["stop", "length", "stop", "length"]
    assert r.texts == ["2", "3456", "2", "6666"]
    assert torch.equal(r.prompt_ids, prompt_ids.repeat_interleave(2, dim=0))
    assert torch.equal(r.prompt_mask, prompt_mask.repeat_interleave(2, dim=0))
    # the HF engine's own mask function agrees on this layout
    mask, reasons = completion_mask(r.completion_ids, {eos})
    assert torch.equal(mask, r.completion_mask) and reasons == r.finish_reasons


def test_one_greedy_completion_fills_the_group_and_decode_replaces_vllm_text(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt_ids, prompt_mask = encode_left_padded(tok, PROMPTS)
    outputs = [request(completion(0, [5, 6, eos], "stop", "vllm text")), request(completion(0, [7], "length"))]
    decode = lambda ids: tok.batch_decode(ids, skip_special_tokens=True)  # noqa: E731
    r = rollout_from_outputs(outputs, prompt_ids, prompt_mask, n=3, eos_ids={eos}, pad_id=pad, decode=decode)
    assert len(r) == 6 and r.completion_ids.shape == (6, 3)
    assert r.completion_ids[:3].tolist() == [[5, 6, eos]] * 3 and r.completion_ids[3:].tolist() == [[7, pad, pad]] * 3
    assert r.texts == ["12"] * 3 + ["3"] * 3
    assert r.finish_reasons == ["stop"] * 3 + ["length"] * 3


def test_a_missing_completion_is_an_error(tok):
    prompt_ids, prompt_mask = encode_left_padded(tok, PROMPTS)
    outputs = [request(completion(0, [5], "length"), completion(1, [5], "length")),
               request(completion(0, [5], "length"))]
    with pytest.raises(ValueError, match="expected 3"):
        rollout_from_outputs(outputs, prompt_ids, prompt_mask, n=3, eos_ids={2}, pad_id=0)




def test_sampled_token_logprobs_are_laid_out_with_the_tokens_and_repeated_for_greedy(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt_ids, prompt_mask = encode_left_padded(tok, PROMPTS)
    outputs = [request(completion(0, [5, eos, 9], "stop", logps=[-0.5, -0.25, -9.0])),  # tokens after EOS dropped
               request(completion(0, [7, 8], "length", logps=[-1.0, -2.0]))]
    r = rollout_from_outputs(outputs, prompt_ids, prompt_mask, n=2, eos_ids={eos}, pad_id=pad)
    assert r.sampler_logp.dtype == torch.float32 and r.sampler_logp.shape == r.completion_ids.shape
    got = torch.where(r.completion_mask.bool(), r.sampler_logp, torch.zeros(())).tolist()
    assert got == [[-0.5, -0.25], [-0.5, -0.25], [-1.0, -2.0], [-1.0, -2.0]]
    assert torch.isnan(r.sampler_logp[~r.completion_mask.bool()]).all()  # padding: no log-prob


def test_a_put_back_stop_token_has_an_unknown_logprob_and_no_logprobs_means_none(tok):
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompt_ids, prompt_mask = encode_left_padded(tok, PROMPTS)
    outputs = [request(completion(0, [5], "stop", stop_reason=eos, logps=[-0.5])),
               request(completion(0, [6, 7], "length", logps=[-1.0, -1.5]))]
    r = rollout_from_outputs(outputs, prompt_ids, prompt_mask, n=1, eos_ids={eos}, pad_id=pad)
    assert r.completion_ids[0].tolist() == [5, eos] and r.sampler_logp[0, 0] == -0.5
    assert math.isnan(r.sampler_logp[0, 1])  # vLLM never scored the EOS it left out
    plain = rollout_from_outputs([request(completion(0, [5], "length"))] * 2, prompt_ids, prompt_mask, n=1,
                                 eos_ids={eos}, pad_id=pad)
    assert plain.sampler_logp is None


@pytest.mark.parametrize("reason", ["abort", "error", "repetition", None])
def test_aborted_or_failed_completions_raise_instead_of_passing_as_length(tok, reason):
    prompt_ids, prompt_mask = encode_left_padded(tok, PROMPTS)
    outputs = [request(completion(0, [5], "length")), request(completion(0, [6], reason))]
    with pytest.raises(RuntimeError, match=f"finish_reason {reason}"):
        rollout_from_outputs(outputs, prompt_ids, prompt_mask, n=1, eos_ids={2}, pad_id=0)


def test_token_logprob_reads_the_sampled_token_and_says_nan_when_absent():
    position = [{4: Logprob(-0.3, rank=2), 9: Logprob(-1.2, rank=1)}]  # logprobs=1: sampled token + top-1
    assert token_logprob(position, 0, 4) == -0.3
    assert math.isnan(token_logprob(position, 0, 5)) and math.isnan(token_logprob(position, 1, 4))
    assert math.isnan(token_logprob(None, 0, 4))
    assert math.isnan(token_logprob([None], 0, 4))  # prompt log-probs start with None


# -- the tied-embedding LoRA refusal --------------------------------------------------------------

def test_a_lora_on_a_tied_lm_head_is_refused_in_one_line(tok):
    tied = LlamaForCausalLM(llama_config(tok, tied=True))
    with pytest.raises(ConfigError, match="lm_head") as err:
        check_tied_lora(tied, ["q_proj", "lm_head"])  # by config, before any LoRA exists
    assert "\n" not in str(err.value) and "rollout.engine=hf" in str(err.value)
    with pytest.raises(ConfigError, match="embed_tokens"):
        check_tied_lora(tied, ["embed_tokens"])
    attach_lora(tied, ["lm_head"], r=2, alpha=4.0)
    with pytest.raises(ConfigError, match="lm_head"):
        check_tied_lora(tied)  # by structure: the adapter is on the tied weight


def test_untied_heads_and_other_targets_pass(tok):
    check_tied_lora(LlamaForCausalLM(llama_config(tok, tied=False)), ["lm_head", *TARGETS])
    check_tied_lora(lora_llama(tok, tied=True), TARGETS)


def test_a_sharded_parameter_is_sent_whole():
    whole = torch.arange(6.0).reshape(2, 3)
    shard = SimpleNamespace(full_tensor=lambda: whole)  # FSDP2's DTensor: full_tensor() all-gathers
    assert _full(shard) is whole and _full(whole) is whole


def test_weights_key_follows_in_place_updates_and_swaps(tok):
    model = lora_llama(tok)
    key = weights_key(model)
    assert weights_key(model) == key
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert weights_key(model) != key


# -- building the LLM -----------------------------------------------------------------------------

def test_llm_arguments_bound_memory_and_ask_for_raw_logprobs():
    cfg = load_config(None, ["rollout.prompts_per_step=4", "rollout.num_generations=3", "run.seed=7",
                             "rollout.vllm_sleep_level=1", "model.dtype=bfloat16"])
    kw = llm_kwargs(cfg, "/m", max_model_len=100, rank=2)
    assert kw == {"model": "/m", "dtype": "bfloat16", "trust_remote_code": False, "seed": 9,
                  "gpu_memory_utilization": 0.3, "enable_prefix_caching": True, "max_num_seqs": 12,
                  "max_num_batched_tokens": BATCHED_TOKENS, "enable_sleep_mode": True,
                  "logprobs_mode": "raw_logprobs", "distributed_executor_backend": "external_launcher",
                  "max_model_len": 100}
    assert LOGPROBS_MODE == "raw_logprobs"  # the trainer's log-probs are at temperature 1 (see vllm.py)
    long = llm_kwargs(cfg, "/m", max_model_len=9000, rank=0)
    assert long["max_num_batched_tokens"] == 9000  # a whole sequence fits one step
    cfg.rollout.vllm_max_num_seqs, cfg.rollout.vllm_max_num_batched_tokens = 5, 512
    kw = llm_kwargs(cfg, "/m", max_model_len=None, rank=0)
    assert (kw["max_num_seqs"], kw["max_num_batched_tokens"]) == (5, 512) and "max_model_len" not in kw


def test_max_model_len_is_the_longest_prompt_plus_the_most_new_tokens_within_the_context(tok):
    model = LlamaForCausalLM(llama_config(tok))  # 128 positions
    prompts = [PROMPTS[0], PROMPTS[1] * 3]
    longest = max_prompt_tokens(tok, prompts, chunk=1)
    assert longest == encode_left_padded(tok, prompts)[0].shape[1]
    cfg = load_config(None, ["rollout.max_new_tokens=20", "eval.max_new_tokens=30"])
    assert default_max_model_len(cfg, model, longest) == longest + 30
    assert default_max_model_len(cfg, model, 120) == 128  # capped at the model's context
    assert default_max_model_len(cfg, model, None) is None  # vLLM's own
    cfg.rollout.vllm_max_model_len = 77
    assert default_max_model_len(cfg, model, longest) == 77


def test_colocation_sets_the_torchrun_variables_and_in_process_engine(monkeypatch):
    saved = dict(os.environ)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        os.environ.pop(var, None)
    try:
        assert _colocate_env() == (0, 1)
        assert (os.environ["RANK"], os.environ["LOCAL_RANK"], os.environ["WORLD_SIZE"]) == ("0", "0", "1")
        assert os.environ["MASTER_ADDR"] == "localhost" and os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
        with socket.socket() as s:  # the chosen port is free
            s.bind(("localhost", int(os.environ["MASTER_PORT"])))
        os.environ.update(RANK="3", WORLD_SIZE="4", MASTER_PORT="1234")
        assert _colocate_env() == (3, 4) and os.environ["MASTER_PORT"] == "1234"  # a launcher's values are kept
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_the_in_process_model_is_found_through_either_worker_layout():
    model = SimpleNamespace(load_weights=lambda w: None)
    v1 = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(
        driver_worker=SimpleNamespace(worker=SimpleNamespace(model_runner=SimpleNamespace(model=model))))))
    v0 = SimpleNamespace(llm_engine=SimpleNamespace(model_executor=SimpleNamespace(
        driver_worker=SimpleNamespace(model_runner=SimpleNamespace(model=model)))))
    assert _inner_model(v1) is model and _inner_model(v0) is model
    assert _inner_model(SimpleNamespace(llm_engine=SimpleNamespace())) is None  # multiprocess: no model_executor


def test_missing_vllm_gives_a_one_line_install_hint(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ConfigError, match=r"pip install bridgerl\[vllm\]"):
        import_vllm()
