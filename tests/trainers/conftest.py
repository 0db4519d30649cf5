"""Fixtures for trainer tests: a tiny float64 Llama, a fixed-answer task and a fixed-rollout engine.

The engine is a test double on purpose: the exact-update tests need rollouts chosen by hand,
so that the expected parameters can be computed independently of any sampling.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call
from transformers import LlamaConfig, LlamaForCausalLM

from bridgerl.config import Config
from bridgerl.config_load import load_config
from bridgerl.models.tiny import build_tokenizer
from bridgerl.rollout.base import Rollout, SamplingParams
from bridgerl.tasks.base import RL_TRAIN, SFT_TRAIN, TEST, TEST_HARD, Example, Task
from bridgerl.trainers.batch import encode_pairs

# prompt question -> the G completions the engine returns, and each completion's reward.
# Questions (and demonstrations) differ in length, so every batch is left-padded in its prompts and
# right-padded in its completions: the exact tests compare against unpadded per-row forwards.
RL_GROUPS = {
    "1+2": [("3", 1.0), ("4", 0.0), ("1+2=3;#3", 1.0)],
    "12+30+4": [("5", 0.0), ("#46", 1.0), ("12+30=42;#42", 0.0)],
}
SFT_PAIRS = [("3+4", "3+4=7;#7"), ("15+1+2", "15+1=16;16+2=18;#18")]


class ListTask(Task):
    name = "list"

    def __init__(self) -> None:
        super().__init__()
        rewards = {q: dict(c) for q, c in RL_GROUPS.items()}
        self.rewards = rewards
        self.splits[RL_TRAIN] = [Example(q, q, "", solution=f"{q}=x;#x") for q in RL_GROUPS]
        self.splits[SFT_TRAIN] = [Example(q, q, "", solution=s) for q, s in SFT_PAIRS]
        self.splits[TEST] = self.splits[RL_TRAIN]
        self.splits[TEST_HARD] = []

    def prompt(self, example: Example) -> str:
        return f"Q:{example.question}=\nA:"

    def grade(self, example: Example, completion: str) -> float:
        return self.rewards.get(example.question, {}).get(completion, 0.0)


class FixedEngine:
    """Returns the hand-chosen completions of RL_GROUPS for each prompt (n must equal G)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.model = None  # the module it would sample from: swapped for the shadow's when sharded (phases.policy)

    def sync(self, model) -> None:
        pass

    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        rows_p, rows_c = [], []
        for p in prompts:
            q = p[len("Q:"):-len("=\nA:")]
            comps = [c for c, _ in RL_GROUPS[q]]
            assert params.n == len(comps)
            rows_p += [p] * len(comps)
            rows_c += comps
        b = encode_pairs(self.tokenizer, rows_p, rows_c)
        return Rollout(b.prompt_ids, b.prompt_mask, b.completion_ids, b.completion_mask, rows_c,
                       ["stop"] * len(rows_c))


def tiny_llama(tokenizer, seed: int = 0, dtype=torch.float64) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype)


def merged_params(theta, lora, scaling):
    """Plain transformers parameter names -> W (+ s * B @ A for LoRA-adapted layers), by hand."""
    out = {}
    for name, w in theta.items():
        if ".base_layer." in name:
            prefix = name[: -len(".base_layer.weight")]
            w = w + scaling * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
        out[name.replace(".base_layer.", ".")] = w
    return out


def row_forward(plain, params, tok, prompt, completion):
    """One unpadded row through a plain model: the completion's (+ EOS) log-probs [C] and the
    entropies [C] of the distributions that predict them (torch.distributions, not bridgerl's)."""
    p_ids = tok(prompt)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + c_ids])
    logits = functional_call(plain, params, (ids,)).logits[0, len(p_ids) - 1 : -1]  # [C, V]
    dist = torch.distributions.Categorical(logits=logits)
    return dist.log_prob(torch.tensor(c_ids)), dist.entropy()


def exact_config(*overrides: str) -> Config:
    base = ["rollout.num_generations=3", "rollout.prompts_per_step=2", "train.sft_batch_size=2",
            "optim.optimizer=sgd", "optim.weight_decay=0.0", "optim.max_grad_norm=1e9", "optim.lr=0.1",
            "optim.lora_lr=0.3", "optim.shadow_lr=0.2", "loss.aggregation=token_mean", "lora.r=2", "lora.alpha=4", "train.steps=1"]
    return load_config(None, base + list(overrides))


@pytest.fixture()
def tokenizer():
    return build_tokenizer()
