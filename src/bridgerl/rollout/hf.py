"""Rollouts with transformers' own `generate` (KV cache, left padding): CPU, tests, small GPUs.

Sampling n completions per prompt prefills each prompt once and gives its n rows copies of its KV
cache (rollout.hf_share_prefill, on by default): transformers' `num_return_sequences` would repeat
every prompt n times first and prefill each copy. The sampled tokens are the same either way, up to
float rounding; the prompt's forward costs 1/n. vLLM does the same with prefix caching.

Two opt-in speed knobs (rollout.hf_cache_implementation, rollout.hf_compile; defaults keep the
plain dynamic-cache eager path): a static KV cache preallocated to prompt + max_new_tokens, and
`torch.compile` of the per-token decode forward, which transformers only does on a static cache.
`benchmarks/rollout_speed.py` measures what each buys on a given machine.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from bridgerl.models.kv_cache import left_padded_positions, output_cache
from bridgerl.models.lora import merge_cache
from bridgerl.rollout.base import Rollout, SamplingParams
from bridgerl.utils.sharding import gathered

CACHE_IMPLEMENTATIONS = ("dynamic", "static")


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
    """Samples from the live module: no weight sync needed (sync is a no-op).

    cache_implementation: "dynamic" (grows per token; transformers' default) or "static"
    (preallocated; needed for compile). compile: torch.compile the decode forward (static only;
    the first call per new batch shape pays the compile). On CUDA transformers would compile a
    static-cache decode on its own; here it compiles only when asked, so the options mean what
    they say.
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, cache_implementation: str = "dynamic",
                 compile: bool = False, share_prefill: bool = True) -> None:
        if cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ValueError(f"cache_implementation={cache_implementation!r}; choose one of {CACHE_IMPLEMENTATIONS}")
        if compile and cache_implementation != "static":
            raise ValueError("compile=True needs cache_implementation='static' (transformers compiles only "
                             "static-cache decoding)")
        self.model = model
        self.tokenizer = tokenizer
        # Sharded weights (FSDP): each generate call gathers the weights once (`gathered`), and
        # every rank must run the same number of forwards, so a rank whose samples all stopped
        # keeps stepping until every rank is done (transformers' synced_gpus). Set by the
        # trainer when it shards.
        self.synced = False
        self.cache_implementation = cache_implementation
        self.compile = compile
        # the prompt's KV cache computed once per prompt (with the dynamic cache: a static one is
        # allocated by generate itself)
        self.share_prefill = share_prefill
        self.eos_ids = stop_token_ids(model, tokenizer)

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module, tokenizer: Any) -> HFEngine:
        """The engine with the rollout.hf_* options of a `Config`; a bad combination is a ConfigError."""
        from bridgerl.config import ConfigError

        r = cfg.rollout
        if r.hf_cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise ConfigError(f"rollout.hf_cache_implementation={r.hf_cache_implementation!r} is not allowed; "
                              f"choose one of: {', '.join(CACHE_IMPLEMENTATIONS)}")
        if r.hf_compile and r.hf_cache_implementation != "static":
            raise ConfigError("rollout.hf_compile=true needs rollout.hf_cache_implementation=static")
        return cls(model, tokenizer, cache_implementation=r.hf_cache_implementation, compile=r.hf_compile,
                   share_prefill=r.hf_share_prefill)

    def sync(self, model: torch.nn.Module) -> None:  # the live module is the policy
        self.model = model

    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        return encode_left_padded(self.tokenizer, prompts, device)

    def _shared_prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int
                        ) -> dict[str, Any] | None:
        """generate's inputs for n samples of each prompt, with every prompt token but the last
        already in a KV cache computed once per prompt and repeated n times (rows i*n .. i*n+n-1,
        num_return_sequences' order). generate runs the last prompt token itself, which gives the
        first sampled token's logits. Position ids follow generate's own rule for left padding.
        None where the model's cache cannot be repeated (the caller then lets generate repeat)."""
        params = inspect.signature(self.model.forward).parameters
        prefix_ids, prefix_mask = prompt_ids[:, :-1], prompt_mask[:, :-1]
        keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # the prefix's logits are unused
        out = self.model(input_ids=prefix_ids, attention_mask=prefix_mask,
                         position_ids=left_padded_positions(prefix_mask), use_cache=True, **keep)
        key, cache = output_cache(out)
        if not hasattr(cache, "batch_repeat_interleave"):  # a legacy tuple cache (older transformers)
            return None
        cache.batch_repeat_interleave(n)
        return {"input_ids": prompt_ids.repeat_interleave(n, dim=0),
                "attention_mask": prompt_mask.repeat_interleave(n, dim=0), key: cache}

    def _cache_flags(self) -> dict[str, Any]:
        if self.cache_implementation == "dynamic":
            return {}
        flags: dict[str, Any] = {"cache_implementation": "static"}
        if not self.compile:
            flags["disable_compile"] = True
            return flags
        from transformers import CompileConfig

        config = CompileConfig()
        if next(self.model.parameters()).device.type == "cpu":
            config._compile_all_devices = True  # transformers' own switch for compiling off-GPU
        flags["compile_config"] = config
        return flags

    @torch.no_grad()
    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        prompt_ids, prompt_mask = self.encode_prompts(prompts)
        flags: dict[str, Any] = {"do_sample": False}
        if not params.greedy:  # pass only the flags that apply (transformers warns otherwise)
            flags = {"do_sample": True, "temperature": params.temperature, "top_k": 0}
            if params.top_p < 1.0:
                flags["top_p"] = params.top_p
        # Greedy samples of one prompt are identical: decode once, copy n times (transformers
        # refuses num_return_sequences > 1 without sampling).
        n_sampled = 1 if params.greedy else params.n
        was_training = self.model.training
        self.model.eval()
        try:
            with merge_cache(self.model), gathered(self.model):
                inputs = {"input_ids": prompt_ids, "attention_mask": prompt_mask, "num_return_sequences": n_sampled}
                if (self.share_prefill and self.cache_implementation == "dynamic" and n_sampled > 1
                        and prompt_ids.shape[1] > 1):
                    inputs = self._shared_prefill(prompt_ids, prompt_mask, n_sampled) or inputs
                out = self.model.generate(
                    **inputs,
                    max_new_tokens=params.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=sorted(self.eos_ids),
                    use_cache=True,
                    synced_gpus=self.synced,
                    **self._cache_flags(),
                    **flags,
                )
        finally:
            self.model.train(was_training)
        P = prompt_ids.shape[1]
        completion_ids = out[:, P:].repeat_interleave(params.n // n_sampled, dim=0)
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


def stop_token_ids(model: torch.nn.Module, tokenizer: Any) -> set[int]:
    """The tokenizer's EOS plus the model's generation-config EOS ids (every engine stops at these)."""
    eos = tokenizer.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos])
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:  # chat models stop at an end-of-turn token too
        ids |= set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
    return ids


def encode_left_padded(tokenizer: Any, prompts: list[str], device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, P] left-padded prompt ids and attention mask (BOS added unless a prompt already has it)."""
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=_adds_bos(tokenizer, prompts[0]))
    finally:
        tokenizer.padding_side = side
    return enc["input_ids"].to(device), enc["attention_mask"].to(device)


def _adds_bos(tokenizer: Any, sample: str) -> bool:
    """Add the tokenizer's special tokens unless the prompt (e.g. a chat template) already starts with BOS."""
    bos = tokenizer.bos_token
    return not (bos and sample.startswith(bos))
