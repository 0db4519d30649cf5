"""The vLLM engine end to end on CPU, against the stand-in `vllm` module (fake_vllm.py: vLLM
0.33's signatures, sampling with the checkpoint's real weights): construction from the config,
weight sync, generation, log-probs, sleep mode, and the errors that must not pass silently."""

from __future__ import annotations

import pytest
import torch

from bridgerl.config import Config, ConfigError
from bridgerl.config_load import load_config
from bridgerl.models.loading import load, resolve
from bridgerl.models.lora import attach_lora, lora_modules, merged_state_dict, split_params, swapped
from bridgerl.rollout.base import SamplingParams
from bridgerl.rollout.hf import HFEngine, encode_left_padded
from bridgerl.rollout.vllm import VLLMEngine
from bridgerl.rollout.vllm_io import vllm_weight_items
from bridgerl.tasks import build_task
from bridgerl.trainers.batch import from_rollout, sequence_logprobs
from bridgerl.trainers.loop import make_engine

import fake_vllm
from fake_vllm import fake_vllm_module  # noqa: F401  (fixture)

PROMPTS = ["Q:1+2+3+4=\nA:", "Q:5+5=\nA:", "Q:9+1+1=\nA:"]
SAMPLE = SamplingParams(max_new_tokens=12, temperature=1.0, n=4)
GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, n=3)


def policy(cfg: Config | None = None, seed: int = 0):
    """The embedded model with our LoRA, w != 0 and theta moved: the live policy is not the checkpoint."""
    cfg = cfg or load_config()
    model, tok = load(cfg.model)
    attach_lora(model, cfg.lora.targets, r=4, alpha=8.0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_modules(model):
            layer.lora_B.weight.copy_(0.05 * torch.randn(layer.lora_B.weight.shape, generator=g))
        model.model.layers[0].mlp.up_proj.base_layer.weight.add_(0.05)
    return model.eval(), tok


def llm() -> fake_vllm.LLM:
    (instance,) = fake_vllm.LLM.instances
    return instance


def names(calls):
    return [name for name, _ in calls]


# -- construction -------------------------------------------------------------------------------

def test_the_engine_builds_vllm_on_the_resolved_model_directory(fake_vllm_module):
    # The construction line once unpacked `where, gguf = resolve(cfg.model)`, but resolve returns
    # one path (GGUF files are converted to a directory): a ValueError before vLLM was reached.
    cfg = load_config()
    model, tok = load(cfg.model)
    VLLMEngine(cfg, model, tok)
    assert llm().init_kwargs["model"] == resolve(cfg.model)


def test_the_engine_builds_from_the_config_with_bounded_memory(fake_vllm_module):
    cfg = load_config(None, ["rollout.prompts_per_step=4", "rollout.num_generations=3", "run.seed=5"])
    model, tok = load(cfg.model)
    engine = VLLMEngine(cfg, model, tok, prompts=PROMPTS)
    longest = encode_left_padded(tok, PROMPTS)[0].shape[1]
    new = cfg.eval.max_new_tokens  # the longer budget (the testbed's evaluation, 48; its rollouts, 24)
    assert new > cfg.rollout.max_new_tokens and engine.max_model_len == longest + new
    assert llm().init_kwargs == {
        "model": resolve(cfg.model), "dtype": "float32", "seed": 5, "trust_remote_code": False,
        "gpu_memory_utilization": 0.3, "enable_prefix_caching": True, "max_num_seqs": 12,
        "max_num_batched_tokens": 4096, "enable_sleep_mode": False, "logprobs_mode": "raw_logprobs",
        "distributed_executor_backend": "external_launcher", "max_model_len": longest + new}
    assert names(llm().calls) == ["load_weights", "reset_prefix_cache"]  # synced once at construction


def test_make_engine_sizes_vllm_from_the_task_prompts(fake_vllm_module):
    from bridgerl.rollout.vllm import engine_prompts

    small = [f"task.arith.{k}=30" for k in ("n_rl_train", "n_sft_train", "n_test", "n_test_hard", "n_val")]
    cfg = load_config(None, ["rollout.engine=vllm", "recipe=grpo", *small])
    model, tok = load(cfg.model)
    task = build_task(cfg.task)
    engine = make_engine(cfg, model, tok, task)
    prompts = engine_prompts(task, tok)
    assert len(prompts) == sum(len(s) for s in task.splits.values())
    longest = max(len(tok(p)["input_ids"]) for p in prompts)
    new = max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens)
    assert engine.max_model_len == llm().init_kwargs["max_model_len"] == longest + new


def test_without_a_gpu_the_engine_is_refused_in_one_line(fake_vllm_module, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = load_config()
    model, tok = load(cfg.model)
    with pytest.raises(ConfigError, match="needs a CUDA GPU; use rollout.engine=hf"):
        VLLMEngine(cfg, model, tok)
    assert not fake_vllm.LLM.instances


def test_a_lora_on_the_tied_lm_head_is_refused_before_vllm_is_built(fake_vllm_module):
    cfg = load_config(None, ["rollout.engine=vllm", "recipe=bridge", "bridge.shadow_rollouts=shared", "lora.targets=[q_proj,lm_head]"])
    model, tok = load(cfg.model)  # the embedded model ties lm_head to the embeddings
    with pytest.raises(ConfigError, match="cannot serve a LoRA on lm_head"):
        make_engine(cfg, model, tok)
    assert not fake_vllm.LLM.instances
    attach_lora(model, ["lm_head"], r=2, alpha=4.0)  # a caller that attached it anyway: refused at sync
    with pytest.raises(ConfigError, match="lm_head"):
        VLLMEngine(load_config(), model, tok)


# -- weights ------------------------------------------------------------------------------------

def test_sync_loads_theta_plus_w_merged_then_resets_the_prefix_cache(fake_vllm_module):
    model, tok = policy()
    engine = VLLMEngine(load_config(), model, tok)
    (loaded, sent), reset = llm().calls[:2]
    assert loaded == "load_weights" and reset == ("reset_prefix_cache", True)
    assert sent == sorted(n for n, _ in vllm_weight_items(model))
    vllm_side = dict(llm().hf.named_parameters())
    for name, value in merged_state_dict(model).items():
        if name in vllm_side:  # vLLM's copy now holds theta + w, not the checkpoint
            assert torch.equal(vllm_side[name], value), name
    llm().calls.clear()
    engine.generate(PROMPTS, GREEDY)
    assert names(llm().calls) == ["generate"]  # weights unchanged since the sync: nothing re-sent


def test_the_engine_resyncs_when_weights_change_or_are_swapped(fake_vllm_module):
    model, tok = policy()
    engine = VLLMEngine(load_config(), model, tok)
    theta, _ = split_params(model)
    name = "model.layers.0.self_attn.q_proj.base_layer.weight"
    shadow = {name: theta[name].detach() + 0.5}
    with swapped(theta, shadow):  # evaluating thetahat: the engine must not sample from theta
        engine.generate(PROMPTS, GREEDY)
        expected = merged_state_dict(model)["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(dict(llm().hf.named_parameters())["model.layers.0.self_attn.q_proj.weight"], expected)
    engine.generate(PROMPTS, GREEDY)  # theta is back
    with torch.no_grad():
        theta[name].add_(0.25)  # an optimizer step without engine.sync
    engine.generate(PROMPTS, GREEDY)
    assert names(llm().calls).count("load_weights") == 4 and names(llm().calls).count("reset_prefix_cache") == 4


def test_a_refused_prefix_cache_reset_raises(fake_vllm_module):
    model, tok = policy()
    engine = VLLMEngine(load_config(), model, tok)
    llm().reset_result = False  # requests still holding cached blocks
    with pytest.raises(RuntimeError, match="prefix cache"):
        engine.sync(model)


def test_without_an_in_process_model_weights_go_through_collective_rpc(fake_vllm_module, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # engine core in another process
    model, tok = policy()
    prebuilt = fake_vllm.LLM(resolve(load_config().model), dtype="float32")
    assert not hasattr(prebuilt.llm_engine, "model_executor")
    VLLMEngine(load_config(), model, tok, llm=prebuilt)
    assert names(prebuilt.calls)[:3] == ["collective_rpc", "load_weights", "reset_prefix_cache"]
    assert torch.equal(dict(prebuilt.hf.named_parameters())["model.layers.0.mlp.up_proj.weight"],
                       merged_state_dict(model)["model.layers.0.mlp.up_proj.weight"])


# -- generation -------------------------------------------------------------------------------------

def test_sampled_rollouts_are_grouped_masked_and_carry_the_policys_logprobs(fake_vllm_module):
    model, tok = policy()
    engine = VLLMEngine(load_config(), model, tok)
    r = engine.generate(PROMPTS, SAMPLE)
    ids, mask = encode_left_padded(tok, PROMPTS)
    assert len(r) == 12 and torch.equal(r.prompt_ids, ids.repeat_interleave(4, 0))
    assert torch.equal(r.prompt_mask, mask.repeat_interleave(4, 0))
    sent = [c for c in llm().calls if c[0] == "generate"][0][1][1]
    assert (sent.n, sent.logprobs, sent.detokenize, sent.stop_token_ids) == (4, 0, False, [tok.eos_token_id])
    lengths = r.completion_mask.sum(1)
    assert (lengths <= SAMPLE.max_new_tokens).all() and (lengths >= 1).all()
    for row, n, reason in zip(r.completion_ids, lengths.tolist(), r.finish_reasons):
        assert (row[n:] == tok.pad_token_id).all()  # padding after the last real token
        assert reason == ("stop" if row[n - 1] == tok.eos_token_id else "length")
        assert tok.eos_token_id not in row[: n - 1].tolist()  # the mask ends at the first EOS
    assert r.texts == tok.batch_decode(r.completion_ids, skip_special_tokens=True)
    # vLLM's log-probs of the sampled tokens are the live policy's (the stand-in computes them with
    # the synced weights; a missing or stale sync would show here)
    trainer, _ = sequence_logprobs(model, from_rollout(r))
    m = r.completion_mask.bool()
    assert torch.isfinite(r.sampler_logp[m]).all()
    assert (trainer.detach() - r.sampler_logp)[m].abs().max() < 1e-4


def test_greedy_matches_the_hf_engine(fake_vllm_module):
    model, tok = policy()
    engine = VLLMEngine(load_config(), model, tok)
    a, b = engine.generate(PROMPTS, GREEDY), HFEngine(model, tok).generate(PROMPTS, GREEDY)
    assert torch.equal(a.completion_ids, b.completion_ids) and torch.equal(a.completion_mask, b.completion_mask)
    assert a.texts == b.texts and a.finish_reasons == b.finish_reasons


def test_prompt_logprobs_score_whole_sequences_with_the_synced_weights(fake_vllm_module):
    model, tok = policy()
    engine = VLLMEngine(load_config(), model, tok)
    r = HFEngine(model, tok).generate(PROMPTS[:2], GREEDY)
    sequences = [p[m.bool()].tolist() + c[k.bool()].tolist()
                 for p, m, c, k in zip(r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask)]
    scored = engine.prompt_logprobs(sequences)
    trainer, _ = sequence_logprobs(model, from_rollout(r))
    for row, seq, lp in zip(range(len(sequences)), sequences, scored):
        n = int(r.completion_mask[row].sum())
        assert len(lp) == len(seq) - 1
        assert torch.allclose(torch.tensor(lp[-n:]), trainer[row, :n].detach(), atol=1e-4)
    sent = [c for c in llm().calls if c[0] == "generate"][-1][1][1]
    assert (sent.prompt_logprobs, sent.max_tokens, sent.skip_reading_prefix_cache) == (0, 1, True)


def test_a_prompt_that_does_not_fit_max_model_len_is_a_config_error(fake_vllm_module):
    model, tok = policy()
    cfg = load_config(None, ["rollout.vllm_max_model_len=20"])
    engine = VLLMEngine(cfg, model, tok)
    with pytest.raises(ConfigError, match="rollout.vllm_max_model_len"):
        engine.generate(PROMPTS, SamplingParams(max_new_tokens=15))


# -- sleep mode ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [1, 2])
def test_sleep_mode_sleeps_after_generating_and_wakes_weights_before_a_sync(fake_vllm_module, level):
    model, tok = policy()
    cfg = load_config(None, [f"rollout.vllm_sleep_level={level}"])
    engine = VLLMEngine(cfg, model, tok)
    assert llm().init_kwargs["enable_sleep_mode"] is True
    assert names(llm().calls) == ["load_weights", "reset_prefix_cache", "sleep"]  # asleep until first used
    llm().calls.clear()
    r = engine.generate(PROMPTS, SAMPLE)  # the stand-in refuses to generate or load while asleep
    resync = ["load_weights", "reset_prefix_cache"] if level == 2 else []  # level 2 discarded the weights
    assert names(llm().calls) == ["wake_up", *resync, "wake_up", "generate", "sleep"]
    assert [c[1] for c in llm().calls if c[0] == "wake_up"] == [["weights"], ["kv_cache"]]
    trainer, _ = sequence_logprobs(model, from_rollout(r))
    assert (trainer.detach() - r.sampler_logp)[r.completion_mask.bool()].abs().max() < 1e-4  # not garbage
    llm().calls.clear()
    with torch.no_grad():
        next(model.parameters()).add_(0.01)  # a training step, then the loop's sync
    engine.sync(model)
    assert names(llm().calls) == ["wake_up", "load_weights", "reset_prefix_cache"]
    vllm_side = dict(llm().hf.named_parameters())
    assert all(torch.equal(vllm_side[n], v) for n, v in merged_state_dict(model).items() if n in vllm_side)
    llm().calls.clear()
    engine.generate(PROMPTS, GREEDY)
    assert names(llm().calls) == ["wake_up", "generate", "sleep"]  # weights awake and current: only the KV cache
