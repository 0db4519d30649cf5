"""The vLLM engine's pure pieces on CPU (weight names and values, sampling flags, output layout,
sync orchestration against a fake LLM), plus one real run marked `vllm` for CUDA machines."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from bridgerl.config import Config
from bridgerl.models.lora import attach_lora, lora_modules, merged_state_dict, split_params, swapped
from bridgerl.models.tiny import build_tokenizer
from bridgerl.rollout.base import SamplingParams
from bridgerl.rollout.hf import HFEngine, completion_mask, encode_left_padded
from bridgerl.rollout.vllm import (
    VLLMEngine,
    rollout_from_outputs,
    to_vllm_sampling_kwargs,
    vllm_name,
    vllm_weight_items,
)

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
                  "skip_special_tokens": True}


def test_greedy_asks_for_one_completion_at_temperature_zero():
    kw = to_vllm_sampling_kwargs(SamplingParams(max_new_tokens=5, temperature=0.0, top_p=0.5, n=4), {2})
    assert (kw["n"], kw["temperature"], kw["top_p"], kw["max_tokens"]) == (1, 0.0, 1.0, 5)


# -- outputs -> Rollout -------------------------------------------------------------------------------

def completion(index, token_ids, finish_reason, text="", stop_reason=None):
    """The fields vLLM documents for `CompletionOutput`."""
    return SimpleNamespace(index=index, token_ids=token_ids, text=text, finish_reason=finish_reason,
                           stop_reason=stop_reason, cumulative_logprob=None, logprobs=None)


def request(*completions):
    return SimpleNamespace(request_id="0", prompt=None, prompt_token_ids=[], outputs=list(completions), finished=True)


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


# -- the engine's orchestration, against a fake LLM ---------------------------------------------------

class FakeLLM:
    """Records what the engine sends; `collective_rpc` runs the function on a fake worker, in process."""

    def __init__(self, eos: int) -> None:
        self.eos = eos
        self.loads: list[dict[str, torch.Tensor]] = []
        self.resets = 0
        self.requests: list = []
        self.sampling: list = []

    def collective_rpc(self, fn, args=()):
        model = SimpleNamespace(load_weights=lambda weights: self.loads.append(dict(weights)))
        return [fn(SimpleNamespace(model_runner=SimpleNamespace(model=model)), *args)]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, requests, sampling, use_tqdm=True):
        self.requests.append(requests)
        self.sampling.append(sampling)
        return [request(*[completion(i, [5, self.eos], "stop") for i in range(sampling["n"])]) for _ in requests]


def test_engine_syncs_merged_weights_resets_the_prefix_cache_and_sends_token_ids(tok):
    model = lora_llama(tok)
    llm = FakeLLM(tok.eos_token_id)
    engine = VLLMEngine(Config(), model, tok, llm=llm, sampling_params_cls=dict)
    assert len(llm.loads) == 1 and llm.resets == 1  # synced at construction
    assert set(llm.loads[0]) == {n for n, _ in vllm_weight_items(model)}
    r = engine.generate(PROMPTS, SamplingParams(max_new_tokens=4, temperature=1.0, n=2))
    assert len(llm.loads) == 1  # weights unchanged since the last sync: nothing re-sent
    ids, mask = encode_left_padded(tok, PROMPTS)
    assert llm.requests[0] == [{"prompt_token_ids": i[m.bool()].tolist()} for i, m in zip(ids, mask)]
    assert llm.sampling[0]["n"] == 2 and llm.sampling[0]["stop_token_ids"] == [tok.eos_token_id]
    assert len(r) == 4 and r.finish_reasons == ["stop"] * 4
    assert r.texts == ["1"] * 4  # token 5 is "1", decoded by our tokenizer (not vLLM's empty text)


def test_engine_resyncs_when_weights_change_or_are_swapped(tok):
    model = lora_llama(tok)
    llm = FakeLLM(tok.eos_token_id)
    engine = VLLMEngine(Config(), model, tok, llm=llm, sampling_params_cls=dict)
    greedy = SamplingParams(max_new_tokens=2, temperature=0.0)
    theta, _ = split_params(model)
    name = "model.layers.0.self_attn.q_proj.base_layer.weight"
    shadow = {name: theta[name].detach() + 1.0}
    with swapped(theta, shadow):  # evaluating thetahat: the engine must not sample from theta
        engine.generate(PROMPTS, greedy)
    assert len(llm.loads) == 2
    sent = llm.loads[1]["model.layers.0.self_attn.q_proj.weight"]
    assert torch.allclose(sent, merged_state_dict(model, overrides=shadow)["model.layers.0.self_attn.q_proj.weight"])
    engine.generate(PROMPTS, greedy)  # theta is back: re-sync again
    assert len(llm.loads) == 3
    with torch.no_grad():
        theta[name].add_(0.5)  # an optimizer step without engine.sync
    engine.generate(PROMPTS, greedy)
    assert len(llm.loads) == 4 and llm.resets == 4


def test_missing_vllm_gives_a_one_line_install_hint(tok, monkeypatch):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(ImportError, match=r"pip install bridgerl\[vllm\]"):
        VLLMEngine(Config(), lora_llama(tok), tok)


# -- the real engine (CUDA + vLLM only) --------------------------------------------------------------

@pytest.mark.vllm
@pytest.mark.gpu
def test_vllm_engine_matches_the_hf_engine_greedy_before_and_after_a_sync(tok, tmp_path):
    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        pytest.skip("needs vLLM and a CUDA GPU")
    torch.manual_seed(0)
    plain = LlamaForCausalLM(llama_config(tok))
    plain.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model = lora_llama(tok).cuda()  # the live policy differs from the checkpoint: w and theta
    cfg = Config()
    cfg.model.name_or_path = str(tmp_path)
    cfg.rollout.vllm_gpu_memory_utilization = 0.2
    engine = VLLMEngine(cfg, model, tok)
    hf = HFEngine(model, tok)
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0, n=2)
    for _ in range(2):
        a, b = engine.generate(PROMPTS, greedy), hf.generate(PROMPTS, greedy)
        assert torch.equal(a.completion_ids.cpu(), b.completion_ids.cpu())
        assert torch.equal(a.completion_mask.cpu(), b.completion_mask.cpu())
        assert a.texts == b.texts and a.finish_reasons == b.finish_reasons
        with torch.no_grad():  # a "training step", then the sync the loop does
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        engine.sync(model)
    sampled = engine.generate(PROMPTS, SamplingParams(max_new_tokens=8, temperature=1.0, n=4))
    assert len(sampled) == 8 and sampled.completion_ids.shape[1] <= 8
