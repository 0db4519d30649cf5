"""Rollouts with vLLM, colocated with training on the same GPU.

Read against vLLM 0.33.0 (the sources of its wheel, read, not installed: vllm/entrypoints/llm.py,
sampling_params.py, outputs.py, logprobs.py, engine/arg_utils.py, v1/engine/{llm_engine,core}.py,
v1/executor/{abstract,uniproc_executor}.py, v1/worker/gpu_worker.py) and vLLM's main of early
2026, and against TRL's colocate mode (trl/generation/vllm_generation.py, GRPOTrainer). vLLM
cannot be installed on the CPU machines this project is built on: every path here is tested
with a stand-in `vllm` module (tests/rollout/fake_vllm.py), and `benchmarks/check_gpu.py` is the
one-command check on a CUDA machine with `bridgerl[vllm]`.

How it works (TRL's "colocate" design): every training process builds its own `vllm.LLM` in the
same process (`distributed_executor_backend="external_launcher"`, V1 multiprocessing off),
taking `rollout.vllm_gpu_memory_utilization` of the GPU, its KV cache and batch bounded by
`rollout.vllm_max_model_len` / `_max_num_seqs` / `_max_num_batched_tokens`. vLLM holds its own
copy of the weights, so after every optimizer step `sync(model)` streams theta + w, merged
(W + s B A, no LoRA names), into the model's `load_weights`, one tensor at a time, and resets
the prefix cache (cached prompt KV was computed with the old weights; a refusal raises).
`generate` also re-syncs by itself when the live module's parameters were replaced or changed
since the last sync (e.g. evaluating the shadow thetahat inside `lora.swapped`), so the engine
never samples from stale weights. With `rollout.vllm_sleep_level` 1 or 2 vLLM sleeps after each
generate (weights offloaded or discarded, KV cache freed) and wakes its weights before the next
sync, its KV cache before the next generate.

Prompts are tokenised here exactly as the HF engine does and sent to vLLM as token ids; the
outputs are laid out exactly as the HF engine's `Rollout` (vllm_io.rollout_from_outputs), plus
the sampled tokens' log-probs as vLLM computed them (`Rollout.sampler_logp`), which the trainer
turns into TRL's truncated importance weight (algos/importance.py, rollout.vllm_importance_*).

Distributed: names from DDP (`module.`), FSDP (`_fsdp_wrapped_module.`), activation
checkpointing and torch.compile wrappers are stripped; FSDP2 DTensor parameters are gathered
with `full_tensor()` (a collective: every rank syncs, as every rank steps). FSDP1 needs
`use_orig_params=True` and the call inside `FSDP.summon_full_params(model)`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import partial
from typing import Any

import torch
from torch import nn

from bridgerl.config import ConfigError
from bridgerl.rollout.base import Rollout, SamplingParams
from bridgerl.rollout.hf import encode_left_padded, stop_token_ids
from bridgerl.rollout.vllm_io import (check_tied_lora, rollout_from_outputs, to_vllm_sampling_kwargs, token_logprob,
                                      vllm_weight_items, weights_key)

INSTALL_HINT = "rollout.engine=vllm needs vLLM: run `pip install bridgerl[vllm]` on a machine with a CUDA GPU"

# Sampled-token log-probs before temperature / top-p ("raw"), because the trainer's own
# log-probs are taken at temperature 1 without top-p (trainers/batch.py): the importance weight
# then measures the two engines' numerical mismatch only. TRL asks for "processed_logprobs"
# because its trainer divides the logits by the temperature. At temperature 1 and top_p 1
# (every shipped config) the two modes are the same numbers.
LOGPROBS_MODE = "raw_logprobs"
BATCHED_TOKENS = 4096  # TRL's max_num_batched_tokens: vLLM's larger default misleads its memory profiler


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError:  # a choice this machine cannot run: one line, exit 2 (not a traceback)
        raise ConfigError(INSTALL_HINT) from None
    return vllm


def max_prompt_tokens(tokenizer: Any, prompts: list[str], chunk: int = 256) -> int:
    """Token length of the longest prompt, tokenised as `generate` will (chunked: a dataset of
    long prompts is never padded into one tensor)."""
    return max(encode_left_padded(tokenizer, prompts[i:i + chunk])[1].shape[1] for i in range(0, len(prompts), chunk))


def default_max_model_len(cfg: Any, model: nn.Module, longest_prompt: int | None) -> int | None:
    """rollout.vllm_max_model_len, else the longest prompt + the most new tokens any call asks for
    (rollouts or evaluation), at most the model's context; None (vLLM's own: the model's context)
    when neither is known."""
    if cfg.rollout.vllm_max_model_len is not None:
        return cfg.rollout.vllm_max_model_len
    if longest_prompt is None:
        return None
    need = longest_prompt + max(cfg.rollout.max_new_tokens, cfg.eval.max_new_tokens or 0)
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(need, context) if context else need


def llm_kwargs(cfg: Any, model_dir: str, *, max_model_len: int | None, rank: int) -> dict[str, Any]:
    """The keyword arguments of `vllm.LLM` (its own and EngineArgs') for one colocated rank."""
    r = cfg.rollout
    kwargs: dict[str, Any] = {
        "model": model_dir,
        "dtype": cfg.model.dtype,
        "trust_remote_code": cfg.model.trust_remote_code,
        "seed": cfg.run.seed + rank,  # ranks sample different streams
        "gpu_memory_utilization": r.vllm_gpu_memory_utilization,
        "enable_prefix_caching": r.vllm_enable_prefix_caching,
        "max_num_seqs": r.vllm_max_num_seqs or r.prompts_per_step * r.num_generations,
        "max_num_batched_tokens": r.vllm_max_num_batched_tokens or max(BATCHED_TOKENS, max_model_len or 0),
        "enable_sleep_mode": r.vllm_sleep_level > 0,
        "logprobs_mode": LOGPROBS_MODE,
        "distributed_executor_backend": "external_launcher",  # in this process, beside training
    }
    if max_model_len is not None:
        kwargs["max_model_len"] = max_model_len
    return kwargs


def _load_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    worker.model_runner.model.load_weights(weights)


def _inner_model(llm: Any) -> nn.Module | None:
    """vLLM's model object when it lives in this process (colocated); attribute paths differ by version."""
    paths = ("llm_engine.model_executor.driver_worker.worker.model_runner.model",  # V1 in-process
             "llm_engine.model_executor.driver_worker.model_runner.model")  # via WorkerWrapperBase.__getattr__; V0
    for path in paths:
        obj = llm
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if hasattr(obj, "load_weights"):
            return obj
    return None


def _colocate_env() -> tuple[int, int]:
    """(rank, world size); sets the torchrun variables vLLM's external launcher reads if absent."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    else:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    os.environ.setdefault("RANK", str(rank))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    os.environ.setdefault("WORLD_SIZE", str(world))
    os.environ.setdefault("MASTER_ADDR", "localhost")
    if "MASTER_PORT" not in os.environ:  # single process: any free port
        with socket.socket() as s:
            s.bind(("localhost", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    # The external launcher asserts it: the engine core must run in this process.
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    return rank, world


class VLLMEngine:
    """vLLM rollouts colocated with training (see the module docstring).

    cfg: the run `Config` (model path and dtype, rollout.*, eval.max_new_tokens, run.seed).
    prompts: every prompt this run may generate from, to size max_model_len (None: the
    model's context, unless rollout.vllm_max_model_len is set). `llm` and
    `sampling_params_cls` replace vLLM's `LLM` and `SamplingParams` (a prebuilt engine); by
    default both come from the `vllm` package.
    """

    def __init__(self, cfg: Any, model: nn.Module, tokenizer: Any, *, prompts: list[str] | None = None,
                 llm: Any = None, sampling_params_cls: Callable[..., Any] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        self.sleep_level = cfg.rollout.vllm_sleep_level
        longest = max_prompt_tokens(tokenizer, prompts) if prompts else None
        self.max_model_len = default_max_model_len(cfg, model, longest)
        if llm is None or sampling_params_cls is None:
            rank = _colocate_env()[0] if llm is None else 0  # before vLLM is imported or built
            vllm = import_vllm()
            sampling_params_cls = sampling_params_cls or vllm.SamplingParams
            llm = llm if llm is not None else self._build_llm(vllm, cfg, rank)
        self.llm = llm
        self.sampling_params_cls = sampling_params_cls
        self._asleep: set[str] = set()
        self._synced: tuple | None = None
        self.sync(model)  # vLLM starts from the checkpoint on disk; the live module may differ
        self._sleep()

    def _build_llm(self, vllm: Any, cfg: Any, rank: int) -> Any:
        from bridgerl.config import ConfigError
        from bridgerl.models.loading import resolve

        where = resolve(cfg.model)  # a GGUF model is loaded from its converted transformers directory
        if not torch.cuda.is_available():
            raise ConfigError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on this machine")
        return vllm.LLM(**llm_kwargs(cfg, where, max_model_len=self.max_model_len, rank=rank))

    # -- sleep mode: asleep between generate and the next sync / generate --------------------------

    def _wake(self, tag: str) -> None:
        if tag not in self._asleep:
            return
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # training's freed blocks go back before vLLM reallocates (TRL does too)
        self.llm.wake_up(tags=[tag])
        self._asleep.discard(tag)
        if tag == "weights" and self.sleep_level == 2:
            self._synced = None  # level 2 discarded them: they must be sent again

    def _sleep(self) -> None:
        if self.sleep_level and not self._asleep:
            self.llm.sleep(level=self.sleep_level)
            self._asleep = {"weights", "kv_cache"}

    # -- weights and generation ---------------------------------------------------------------------

    def sync(self, model: nn.Module) -> None:
        """Push theta + w (merged) into vLLM's copy of the weights, then reset its prefix cache."""
        self.model = model
        check_tied_lora(model)
        self._wake("weights")  # loading into slept (unmapped) weights would write to freed memory
        inner = _inner_model(self.llm)
        if inner is not None:
            inner.load_weights(vllm_weight_items(model))  # streamed: one merged matrix at a time
        else:  # no in-process model: the public RPC, run by the worker (all merged tensors at once)
            self.llm.collective_rpc(_load_on_worker, args=(list(vllm_weight_items(model)),))
        if self.llm.reset_prefix_cache() is False:  # False while requests still hold cached blocks
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight sync; prompts would be "
                               "served from KV computed with the old weights")
        self._synced = weights_key(model)

    def _run(self, requests: list[dict[str, Any]], sampling: Any) -> list[Any]:
        """vLLM's generate on current weights: wake them (re-sync if the module changed), wake the KV
        cache, run, and sleep again (sleep mode)."""
        self._wake("weights")
        if weights_key(self.model) != self._synced:  # e.g. thetahat swapped in for evaluation
            self.sync(self.model)
        self._wake("kv_cache")
        try:
            return self.llm.generate(requests, sampling, use_tqdm=False)
        finally:
            self._sleep()

    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        from bridgerl.config import ConfigError

        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = encode_left_padded(self.tokenizer, prompts, device)
        longest = prompt_ids.shape[1]
        if self.max_model_len is not None and longest + params.max_new_tokens > self.max_model_len:
            raise ConfigError(f"a prompt of {longest} tokens + {params.max_new_tokens} new tokens exceeds vLLM's "
                              f"max_model_len {self.max_model_len} (vLLM would cut the completion short); "
                              f"raise rollout.vllm_max_model_len or lower the new tokens")
        requests = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids, prompt_mask)]
        outputs = self._run(requests, self.sampling_params_cls(**to_vllm_sampling_kwargs(params, self.eos_ids)))
        return rollout_from_outputs(outputs, prompt_ids, prompt_mask, n=params.n, eos_ids=self.eos_ids,
                                    pad_id=self.pad_id,
                                    decode=partial(self.tokenizer.batch_decode, skip_special_tokens=True))

    def prompt_logprobs(self, sequences: list[list[int]]) -> list[list[float]]:
        """vLLM's log-prob of each token of each sequence after the first, given the tokens before
        it (prompt_logprobs=0, one throwaway new token): vLLM's forward pass, to check against the
        trainer's (benchmarks/check_gpu.py). NaN where vLLM gives none."""
        sampling = self.sampling_params_cls(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outputs = self._run([{"prompt_token_ids": list(s)} for s in sequences], sampling)
        return [[token_logprob(out.prompt_logprobs, i, t) for i, t in enumerate(s) if i > 0]
                for out, s in zip(outputs, sequences)]


def engine_prompts(task: Any, tokenizer: Any) -> list[str]:
    """Every prompt a run on `task` can generate from (all splits), rendered as the trainer does."""
    from bridgerl.tasks.base import render_prompt

    return [render_prompt(task, e, tokenizer) for examples in task.splits.values() for e in examples]
