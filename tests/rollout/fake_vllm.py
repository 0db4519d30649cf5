"""A stand-in for the `vllm` package, for CPU tests of rollout/vllm.py (vLLM needs a CUDA GPU).

Its public surface mirrors vLLM 0.33.0, read from the sources of its wheel (not installed):
- vllm/entrypoints/llm.py: `LLM.__init__(model, *, ...named options..., **kwargs)` with the
  remaining keywords going to `EngineArgs` (vllm/engine/arg_utils.py; an unknown one is a
  TypeError there, as here); `generate(prompts, sampling_params=None, *, use_tqdm, lora_request,
  priority, tokenization_kwargs, mm_processor_kwargs)`; `collective_rpc(method, timeout, args,
  kwargs)` calling a callable with the worker first; `reset_prefix_cache(reset_running_requests,
  reset_connector) -> bool`; `sleep(level=1, mode="abort")`; `wake_up(tags=None) -> bool`.
- vllm/sampling_params.py: `SamplingParams` fields and defaults (keyword-only; top_k 0 = off;
  logprobs / prompt_logprobs; detokenize) and `_verify_args` / `_verify_greedy_sampling` checks
  (temperature in [0, 2], top_p in (0, 1], n must be 1 when greedy, ...).
- vllm/outputs.py: `RequestOutput(request_id, prompt, prompt_token_ids, prompt_logprobs,
  outputs, finished, ...)`, `CompletionOutput(index, text, token_ids, cumulative_logprob,
  logprobs, ..., finish_reason, stop_reason, ...)`; vllm/logprobs.py: `Logprob(logprob, rank,
  decoded_token)`, sample logprobs one {token id: Logprob} per position, prompt logprobs with
  None first; config/model.py: logprobs_mode "raw_logprobs" (default) | "processed_logprobs" ...
- vllm/v1/engine/__init__.py: finish reasons "stop", "length", "abort", "error", "repetition";
  v1/core/sched/utils.py check_stop: the stop token stays in token_ids, stop_reason is None for
  EOS and the token id for a stop_token_ids hit; length when max_tokens or max_model_len is hit.
- vllm/v1/engine/llm_engine.py: `llm_engine.model_executor` exists only in-process
  (VLLM_ENABLE_V1_MULTIPROCESSING=0, which v1/executor/uniproc_executor.py's external launcher
  asserts); v1/worker/worker_base.py: `driver_worker` is a WorkerWrapperBase forwarding
  attributes to `.worker`, whose `model_runner.model.load_weights` takes (name, tensor) pairs.
- v1/executor/abstract.py + v1/worker/gpu_worker.py + v1/engine/core.py: sleep level 1 offloads
  the weights, level 2 discards them (buffers kept), both drop the KV cache and clear the
  prefix cache; wake_up by tag; scheduling resumes only when fully awake (a generate while any
  tag sleeps would wait forever: here it raises).
Cross-checked with vLLM main of early 2026 (vllm/entrypoints/llm.py at 10fdb8f0d75a) and with
how TRL calls it (trl/generation/vllm_generation.py).

Not a mock where the real thing can run: the stand-in loads the checkpoint with transformers,
samples from it (temperature, top-p, n, stop ids, max_tokens, max_model_len), reports the raw
(or processed) log-probs of the sampled tokens, and `load_weights` writes into its own copy, so
a test sees vLLM follow a sync. What it cannot reproduce is vLLM's kernels: its log-probs equal
the trainer's up to float rounding, while vLLM's differ by the mismatch the importance weight
corrects (measured on a GPU by benchmarks/check_gpu.py). Every call is recorded in `LLM.calls`.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

import pytest
import torch

FINISH_REASON_STRINGS = ("stop", "length", "abort", "error", "repetition")
LOGPROBS_MODES = ("raw_logits", "raw_logprobs", "processed_logits", "processed_logprobs")
# EngineArgs fields (vllm/engine/arg_utils.py, 0.33.0) that reach LLM through **kwargs and that
# bridgerl may set; any other keyword is refused as EngineArgs(**kwargs) would refuse a misspelling.
ENGINE_ARGS = ("max_model_len", "max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching",
               "enable_sleep_mode", "logprobs_mode", "distributed_executor_backend", "disable_log_stats",
               "enable_chunked_prefill", "async_scheduling", "max_logprobs", "block_size")
DTYPES = {"auto": None, "float32": torch.float32, "float": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16, "half": torch.float16}


class VLLMValidationError(Exception):  # vllm/exceptions.py: a VLLMClientError, not a ValueError
    pass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    routed_experts: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    lora_request: Any = None
    sampling_mask: Any = None
    spec_decode_metrics: Any = None
    weight_versions: Any = None


class RequestOutput:
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int] | None,
                 prompt_logprobs: list | None, outputs: list[CompletionOutput], finished: bool, metrics: Any = None,
                 lora_request: Any = None, encoder_prompt: str | None = None,
                 encoder_prompt_token_ids: list[int] | None = None, num_cached_tokens: int | None = None,
                 num_cache_creation_tokens: int | None = None, *, prompt_token_id_logprobs: Any = None,
                 kv_transfer_params: dict | None = None, ec_transfer_params: dict | None = None, **kwargs: Any) -> None:
        self.request_id, self.prompt, self.prompt_token_ids = request_id, prompt, prompt_token_ids
        self.prompt_logprobs, self.outputs, self.finished = prompt_logprobs, outputs, finished
        self.metrics, self.lora_request, self.num_cached_tokens = metrics, lora_request, num_cached_tokens


@dataclass(kw_only=True)
class SamplingParams:
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    watermarking: bool | None = None
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int | None = 16
    min_tokens: int = 0
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    logprob_token_ids: list[int] | None = None
    flat_logprobs: bool = False
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    skip_reading_prefix_cache: bool | None = None
    extra_args: dict | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise VLLMValidationError(f"n must be at least 1, got {self.n}.")
        if not 0.0 <= self.temperature <= 2.0:
            raise VLLMValidationError(f"temperature must be in [0, 2], got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise VLLMValidationError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise VLLMValidationError(f"top_k must be -1 (disable), 0 (disable) or at least 1, got {self.top_k}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise VLLMValidationError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and value != -1 and value < 0:
                raise VLLMValidationError(f"{name} must be non-negative, got {value}.")
        self.stop_token_ids = list(self.stop_token_ids or [])
        if self.temperature < 1e-5:  # greedy
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0
            if self.n > 1:
                raise VLLMValidationError(f"n must be 1 when using greedy sampling, got {self.n}.")
        if self.skip_reading_prefix_cache is None:  # prompt logprobs are computed, never read from cache
            self.skip_reading_prefix_cache = self.prompt_logprobs is not None


# -- the in-process engine objects: llm.llm_engine.model_executor.driver_worker(.worker).model_runner.model

class Model:
    """vLLM's model object as far as a weight sync sees it: `load_weights((name, tensor), ...)`."""

    def __init__(self, llm: LLM, hf: torch.nn.Module) -> None:
        self.llm, self.hf = llm, hf

    @torch.no_grad()
    def load_weights(self, weights) -> set[str]:
        if "weights" in self.llm.sleeping:
            raise RuntimeError("load_weights into slept weights: their memory is unmapped (wake_up(['weights']) first)")
        params = dict(self.hf.named_parameters())  # tied lm_head listed once, as in vLLM's loader
        loaded = set()
        for name, tensor in weights:
            if name not in params:
                raise KeyError(name)  # vLLM's loaders index params_dict[name]
            if params[name].shape != tensor.shape:
                raise AssertionError(f"{name}: {tuple(params[name].shape)} != {tuple(tensor.shape)}")
            params[name].copy_(tensor.to(params[name]))
            loaded.add(name)
        self.llm.calls.append(("load_weights", sorted(loaded)))
        return loaded


class Worker:
    def __init__(self, model: Model) -> None:
        self.model_runner = types.SimpleNamespace(model=model)


class WorkerWrapperBase:
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def __getattr__(self, attr: str) -> Any:  # vllm/v1/worker/worker_base.py: forwards to the worker
        return getattr(self.worker, attr)


class LLM:
    instances: list[LLM] = []

    def __init__(self, model: str, *, runner: str = "auto", convert: str = "auto", tokenizer: str | None = None,
                 tokenizer_mode: str = "auto", skip_tokenizer_init: bool = False, trust_remote_code: bool = False,
                 allowed_local_media_path: str = "", allowed_media_domains: list[str] | None = None,
                 tensor_parallel_size: int = 1, dtype: str = "auto", quantization: str | None = None,
                 revision: str | None = None, tokenizer_revision: str | None = None, chat_template: str | None = None,
                 seed: int = 0, gpu_memory_utilization: float = 0.92, cpu_offload_gb: float = 0,
                 enforce_eager: bool = False, hf_token: Any = None, hf_overrides: Any = None,
                 compilation_config: Any = None, **kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        unknown = sorted(set(kwargs) - set(ENGINE_ARGS))
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got an unexpected keyword argument {unknown[0]!r}")
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        self.logprobs_mode = kwargs.get("logprobs_mode", "raw_logprobs")
        if self.logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode {self.logprobs_mode!r} not in {LOGPROBS_MODES}")
        multiprocess = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1") != "0"
        if kwargs.get("distributed_executor_backend") == "external_launcher":
            assert not multiprocess, "To get deterministic execution, please set VLLM_ENABLE_V1_MULTIPROCESSING=0"
            for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                if var not in os.environ:
                    raise KeyError(var)  # env:// rendezvous
        self.init_kwargs = dict(model=model, dtype=dtype, seed=seed, trust_remote_code=trust_remote_code,
                                gpu_memory_utilization=gpu_memory_utilization, **kwargs)
        self.hf = AutoModelForCausalLM.from_pretrained(model, dtype=DTYPES[dtype] or torch.float32).eval()
        context = getattr(self.hf.config, "max_position_embeddings", None)
        self.max_model_len = kwargs.get("max_model_len") or context
        if context and self.max_model_len > context:
            raise ValueError(f"User-specified max_model_len ({self.max_model_len}) is greater than the derived "
                             f"max_model_len ({context})")
        self.tokenizer = None if skip_tokenizer_init else AutoTokenizer.from_pretrained(tokenizer or model)
        gen_eos = self.hf.generation_config.eos_token_id
        self.eos_ids = set(gen_eos if isinstance(gen_eos, list) else [gen_eos]) - {None}
        self.enable_sleep_mode = kwargs.get("enable_sleep_mode", False)
        self.sleeping: set[str] = set()
        self.reset_result = True  # what reset_prefix_cache answers (False: requests still hold blocks)
        self.calls: list[tuple[str, Any]] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.request_counter = itertools.count()
        self.llm_engine = types.SimpleNamespace()
        self._worker = Worker(Model(self, self.hf))
        if not multiprocess:  # vllm/v1/engine/llm_engine.py: only an in-process engine exposes it
            self.llm_engine.model_executor = types.SimpleNamespace(driver_worker=WorkerWrapperBase(self._worker))
        LLM.instances.append(self)

    def collective_rpc(self, method, timeout: float | None = None, args: tuple = (), kwargs: dict | None = None):
        self.calls.append(("collective_rpc", method))
        if callable(method):  # called with the worker as `self`, as vLLM does
            return [method(self._worker, *args, **(kwargs or {}))]
        return [getattr(self._worker, method)(*args, **(kwargs or {}))]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.calls.append(("reset_prefix_cache", self.reset_result))
        return self.reset_result

    def sleep(self, level: int = 1, mode: str = "abort") -> None:
        if level >= 1 and not self.enable_sleep_mode:
            raise AssertionError("Sleep mode is not enabled in the model config")
        self.calls.append(("sleep", level))
        if level == 2:  # weights discarded: what is left in their memory is garbage
            with torch.no_grad():
                for p in self.hf.parameters():
                    p.fill_(math.nan)
        self.sleeping = {"weights", "kv_cache"}

    def wake_up(self, tags: list[str] | None = None) -> bool:
        self.calls.append(("wake_up", None if tags is None else list(tags)))
        if tags and any(t not in self.sleeping for t in tags):
            return not self.sleeping  # vLLM logs a warning and does nothing
        self.sleeping = set() if tags is None else self.sleeping - set(tags)
        return not self.sleeping

    # -- generation with the loaded weights -------------------------------------------------------

    def generate(self, prompts, sampling_params: SamplingParams | None = None, *, use_tqdm: Any = True,
                 lora_request: Any = None, priority: Any = None, tokenization_kwargs: dict | None = None,
                 mm_processor_kwargs: dict | None = None) -> list[RequestOutput]:
        if self.sleeping:
            raise RuntimeError(f"generate while {sorted(self.sleeping)} sleep: the scheduler would never resume")
        params = sampling_params or SamplingParams()
        prompts = prompts if isinstance(prompts, list) else [prompts]
        self.calls.append(("generate", (prompts, params)))
        return [self._one(p, params) for p in prompts]

    @torch.no_grad()
    def _one(self, prompt: dict, params: SamplingParams) -> RequestOutput:
        ids = list(prompt["prompt_token_ids"])
        if len(ids) > self.max_model_len:
            raise ValueError(f"prompt of {len(ids)} tokens is longer than max_model_len {self.max_model_len}")
        stops = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_ids)
        budget = min(params.max_tokens or 10**9, self.max_model_len - len(ids))
        completions = []
        for index in range(params.n):
            out, logps = [], []
            finish, stop_reason = "length", None
            for step in range(budget):
                logits = self.hf(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
                if step < params.min_tokens:
                    logits[list(stops)] = -math.inf
                token, logp = self._sample(logits, params)
                out.append(token)
                logps.append(logp)
                if token in stops:
                    finish, stop_reason = "stop", (None if token in self.eos_ids else token)
                    break
            logprobs = None
            if params.logprobs is not None:
                logprobs = [{t: Logprob(lp, rank=None)} for t, lp in zip(out, logps)]
            text = self.tokenizer.decode(out, skip_special_tokens=params.skip_special_tokens) if (
                params.detokenize and self.tokenizer) else ""
            completions.append(CompletionOutput(index, text, out, sum(logps) if logprobs else None, logprobs,
                                                finish_reason=finish, stop_reason=stop_reason))
        prompt_logprobs = None
        if params.prompt_logprobs is not None:
            lp = torch.log_softmax(self.hf(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
            prompt_logprobs = [None] + [{t: Logprob(float(lp[i, t]))} for i, t in enumerate(ids[1:])]
        return RequestOutput(str(next(self.request_counter)), None, ids, prompt_logprobs, completions, True)

    def _sample(self, logits: torch.Tensor, params: SamplingParams) -> tuple[int, float]:
        raw = torch.log_softmax(logits, -1)
        if params.temperature < 1e-5:
            token = int(logits.argmax())
            return token, float(raw[token])
        processed = torch.log_softmax(logits / params.temperature, -1)
        if params.top_p < 1.0:  # nucleus: keep the smallest top set whose mass reaches top_p
            probs, order = processed.exp().sort(descending=True)
            drop = (probs.cumsum(0) - probs) >= params.top_p
            processed = processed.clone()
            processed[order[drop]] = -math.inf
            processed = torch.log_softmax(processed, -1)
        token = int(torch.multinomial(processed.exp(), 1, generator=self.generator))
        return token, float((processed if self.logprobs_mode.startswith("processed") else raw)[token])


def module() -> types.ModuleType:
    """A fresh `vllm` module object exposing the stand-in's public names."""
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    mod.RequestOutput, mod.CompletionOutput = RequestOutput, CompletionOutput
    mod.__version__ = "0.33.0 (bridgerl test stand-in)"
    mod.__file__ = __file__
    return mod


@pytest.fixture()
def fake_vllm_module(monkeypatch):
    """`import vllm` gives the stand-in, and torch reports a GPU (the stand-in plays both). The
    environment variables the engine sets for vLLM's external launcher are restored afterwards."""
    saved = dict(os.environ)
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    LLM.instances.clear()
    mod = module()
    monkeypatch.setitem(sys.modules, "vllm", mod)
    yield mod
    os.environ.clear()
    os.environ.update(saved)
