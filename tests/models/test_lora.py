"""Our merged-weight LoRA against peft's own LoRA layer, and the deployment round trips."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from bridgerl.models.lora import (attach_lora, merge_cache, merged_state_dict, save_adapter, save_merged, split_params,
                                  swapped)
from bridgerl.models.tiny import build_tokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(seed=0, tie=True):
    config = LlamaConfig(vocab_size=30, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32,
                         tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _randomise_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_forward_matches_peft_lora_with_the_same_adapter(tmp_path):
    peft = pytest.importorskip("peft")
    ours = _model()
    base = copy.deepcopy(ours)
    attach_lora(ours, TARGETS, r=4, alpha=8)
    _randomise_lora(ours)
    save_adapter(ours, tmp_path / "adapter", targets=TARGETS, r=4, alpha=8, dropout=0.0)
    theirs = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    ids = torch.randint(0, 30, (3, 9))
    torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, atol=1e-5, rtol=1e-5)


def test_fresh_adapter_is_a_no_op():
    ours = _model()
    plain = copy.deepcopy(ours)
    attach_lora(ours, TARGETS, r=4, alpha=8)
    ids = torch.randint(0, 30, (2, 7))
    torch.testing.assert_close(ours(ids).logits, plain(ids).logits, atol=0, rtol=0)


def test_gradients_reach_base_weights_and_both_lora_factors():
    ours = _model()
    attach_lora(ours, TARGETS, r=4, alpha=8)
    _randomise_lora(ours)
    ours(torch.randint(0, 30, (2, 7))).logits.sum().backward()
    theta, lora = split_params(ours)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora.values())
    assert all(p.grad is not None for n, p in theta.items() if "base_layer" in n)


def test_dropout_path_equals_merged_path_in_eval_mode():
    ours = _model()
    attach_lora(ours, TARGETS, r=4, alpha=8, dropout=0.5)
    _randomise_lora(ours)
    ids = torch.randint(0, 30, (2, 7))
    ours.eval()
    merged = ours(ids).logits
    for _, m in ours.named_modules():  # force the unmerged formula, dropout inactive in eval
        if hasattr(m, "lora_A"):
            m.training = True
            m.dropout.eval()
    unmerged = ours(ids).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_merged_checkpoint_loads_in_plain_transformers_with_identical_logits(tmp_path):
    ours = _model()
    attach_lora(ours, TARGETS, r=4, alpha=8)
    _randomise_lora(ours)
    save_merged(ours, build_tokenizer(), tmp_path / "final")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert not any(".lora_" in n or "base_layer" in n for n, _ in loaded.named_parameters())
    ids = torch.randint(0, 30, (2, 7))
    torch.testing.assert_close(loaded(ids).logits, ours(ids).logits, atol=1e-5, rtol=1e-5)


def test_merged_state_dict_overrides_give_the_shadow_model():
    ours = _model(tie=False)
    attach_lora(ours, TARGETS, r=4, alpha=8)
    _randomise_lora(ours)
    theta, _ = split_params(ours)
    shadow = {n: p.detach() + 0.1 for n, p in theta.items()}
    state = merged_state_dict(ours, overrides=shadow)
    with swapped(theta, shadow):
        expected = merged_state_dict(ours)
    assert state.keys() == expected.keys()
    for k in state:
        torch.testing.assert_close(state[k], expected[k])
    # and swapping back restored theta
    assert all(not torch.equal(p, shadow[n]) for n, p in theta.items())


def test_merge_cache_gives_the_same_generation():
    ours = _model()
    attach_lora(ours, TARGETS, r=4, alpha=8)
    _randomise_lora(ours)
    ids = torch.randint(3, 30, (2, 5))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    plain = ours.generate(ids, **kw)
    with merge_cache(ours):
        cached = ours.generate(ids, **kw)
    assert torch.equal(plain, cached)


def test_adapter_config_is_peft_format(tmp_path):
    ours = _model()
    attach_lora(ours, ["q_proj"], r=2, alpha=4)
    save_adapter(ours, tmp_path, targets=["q_proj"], r=2, alpha=4, dropout=0.0)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2 and config["target_modules"] == ["q_proj"]


def test_unknown_targets_are_rejected_with_the_valid_names():
    with pytest.raises(ValueError, match="q_proj"):
        attach_lora(_model(), ["qkv"], r=2, alpha=4)


def test_saved_shadow_of_a_tied_model_computes_what_the_shadow_computed_in_training(tmp_path):
    # The embedded testbed ties lm_head to embed_tokens: thetahat's embedding must reach both keys,
    # or shadow/ keeps theta's embedding (summary 0.115 vs `bridgerl eval shadow/` 0.06 on a 20-step run).
    ours = _model(tie=True)
    attach_lora(ours, TARGETS, r=4, alpha=8)
    _randomise_lora(ours)
    theta, _ = split_params(ours)
    shadow = {n: p.detach() + 0.1 for n, p in theta.items()}
    save_merged(ours, build_tokenizer(), tmp_path / "shadow", overrides=shadow)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "shadow")
    ids = torch.randint(0, 30, (2, 7))
    with swapped(theta, shadow), torch.no_grad():
        expected = ours(ids).logits
    torch.testing.assert_close(loaded(ids).logits, expected, atol=1e-5, rtol=1e-5)
