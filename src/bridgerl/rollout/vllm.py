"""Rollouts with vLLM, colocated with training on the same GPU. EXPERIMENTAL.

Experimental: the pure pieces (weight names, sampling flags, the Rollout layout) are tested on
CPU, but the engine itself has not yet run on a GPU in this project; `tests/rollout/
test_vllm_pieces.py -m vllm` is the check to run on a CUDA machine with `bridgerl[vllm]`.

How it works (the TRL "colocate" design): every training process builds its own `vllm.LLM` in
the same process (`distributed_executor_backend="external_launcher"`), taking
`rollout.vllm_gpu_memory_utilization` of the GPU. vLLM holds its own copy of the weights, so
after every optimizer step `sync(model)` streams theta + w, merged (W + s B A, no LoRA names),
into vLLM's `load_weights`, one tensor at a time, and clears the prefix cache (cached prompt
KV was computed with the old weights). `generate` also re-syncs by itself when the live
module's parameters were replaced or changed since the last sync (e.g. evaluating the shadow
thetahat inside `lora.swapped`), so the engine never samples from stale weights.

Prompts are tokenised here exactly as the HF engine does and sent to vLLM as token ids, and
the outputs are laid out exactly as the HF engine's `Rollout` (prompt left-padded, completion
right-padded, mask up to and including EOS, rows grouped by prompt, texts decoded by our
tokenizer), so recipes and graders cannot tell the engines apart.

Distributed: names from DDP (`module.`), FSDP (`_fsdp_wrapped_module.`), activation
checkpointing and torch.compile wrappers are stripped; FSDP2 DTensor parameters are gathered
with `full_tensor()` (a collective: every rank syncs, as every rank steps). FSDP1 needs
`use_orig_params=True` and the call inside `FSDP.summon_full_params(model)`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import torch
from torch import nn

from bridgerl.models.lora import LoRALinear, is_lora_param
from bridgerl.rollout.base import Rollout, SamplingParams
from bridgerl.rollout.hf import encode_left_padded, stop_token_ids

INSTALL_HINT = "rollout.engine=vllm needs vLLM: run `pip install bridgerl[vllm]` on a machine with a CUDA GPU"

# Name parts added by wrappers around the transformers model (never part of a checkpoint name).
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return vllm


# -- weights: our module -> the names and values vLLM's load_weights expects ---------------------

def vllm_name(name: str) -> str:
    """A parameter name of our (possibly wrapped, LoRA-carrying) model -> the plain transformers name."""
    while name.startswith("module."):  # DDP (possibly nested)
        name = name[len("module."):]
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name.replace(".base_layer.", ".")


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 DTensor shard -> whole tensor


@torch.no_grad()
def vllm_weight_items(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(plain transformers name, tensor) for every parameter of theta + w merged, lazily.

    LoRA layers yield their merged weight W + s * B @ A under the base layer's plain name; the
    A and B tensors themselves are never yielded. Other parameters are yielded as they are (no
    copy). Only one merged matrix exists at a time, so syncing a large model costs one layer of
    extra memory. Tied parameters appear once (vLLM ties them again itself); buffers are not
    sent (vLLM builds its own rotary tables).
    """
    lora = {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}
    for name, param in model.named_parameters():
        if is_lora_param(name):
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        if leaf == "weight" and owner in lora:
            layer = lora[owner]
            a, b = _full(layer.lora_A.weight), _full(layer.lora_B.weight)
            yield vllm_name(name), _full(param) + layer.scaling * (b @ a)  # [out, in] + s [out, r] @ [r, in]
        else:
            yield vllm_name(name), _full(param).detach()


def weights_key(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter is updated in place (version counter) or swapped (storage)."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters())


# -- sampling: our SamplingParams -> vllm.SamplingParams keyword arguments ------------------------

def to_vllm_sampling_kwargs(params: SamplingParams, eos_ids: Iterable[int]) -> dict[str, Any]:
    """The vLLM sampling flags that reproduce the HF engine's sampling.

    Greedy (temperature 0) asks for one completion per prompt: the n greedy copies are
    identical, and `rollout_from_outputs` repeats it. No top-k (vLLM's default is off, as
    HF's top_k=0). Generation stops at every EOS id (tokenizer + generation config).
    """
    return {
        "n": 1 if params.greedy else params.n,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_new_tokens,
        "stop_token_ids": sorted(eos_ids),
        "skip_special_tokens": True,
    }


# -- outputs: vLLM RequestOutputs -> our Rollout layout -------------------------------------------

def _completion_tokens(completion: Any, eos_ids: set[int]) -> tuple[list[int], bool]:
    """(tokens up to and including the first EOS, stopped at EOS?) of one vLLM CompletionOutput."""
    ids = list(completion.token_ids)
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[: i + 1], True
    # A stop token that vLLM reports in stop_reason but left out of token_ids: put it back, so
    # the training mask covers the EOS as in the HF engine.
    stop = getattr(completion, "stop_reason", None)
    if completion.finish_reason == "stop" and isinstance(stop, int) and stop in eos_ids:
        return ids + [stop], True
    return ids, completion.finish_reason == "stop"


def rollout_from_outputs(outputs: list[Any], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, n: int,
                         eos_ids: Iterable[int], pad_id: int,
                         decode: Callable[[torch.Tensor], list[str]] | None = None) -> Rollout:
    """One `Rollout` (HF engine layout) from vLLM's `LLM.generate` outputs, one per prompt in order.

    outputs:     RequestOutput-like objects; `.outputs` holds CompletionOutputs with `index`,
                 `token_ids`, `text`, `finish_reason` ("stop" | "length"), `stop_reason`
    prompt_ids:  [P_rows, P] left-padded prompts as sent; prompt_mask the same shape
    n:           completions per prompt wanted; a single (greedy) completion is repeated n times
    decode:      completion ids [B, C] (pad after EOS) -> texts; None = vLLM's own `.text`
    """
    eos = set(eos_ids)
    if len(outputs) != prompt_ids.shape[0]:
        raise ValueError(f"{len(outputs)} vLLM outputs for {prompt_ids.shape[0]} prompts")
    rows: list[list[int]] = []
    stopped: list[bool] = []
    texts: list[str] = []
    for out in outputs:
        completions = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
        if len(completions) == 1 and n > 1:
            completions = completions * n
        if len(completions) != n:
            raise ValueError(f"a prompt got {len(completions)} completions, expected {n}")
        for c in completions:
            ids, stop = _completion_tokens(c, eos)
            rows.append(ids)
            stopped.append(stop)
            texts.append(c.text)
    device = prompt_ids.device
    width = max(1, max(len(r) for r in rows))
    completion_ids = torch.full((len(rows), width), pad_id, dtype=prompt_ids.dtype)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        completion_ids[i, : len(ids)] = torch.tensor(ids, dtype=prompt_ids.dtype)
        completion_mask[i, : len(ids)] = 1
    completion_ids, completion_mask = completion_ids.to(device), completion_mask.to(device)
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(n, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(n, dim=0),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        texts=decode(completion_ids) if decode is not None else texts,
        finish_reasons=["stop" if s else "length" for s in stopped],
    )


# -- the engine -----------------------------------------------------------------------------------

def _load_on_worker(worker: Any, weights: list[tuple[str, torch.Tensor]]) -> None:
    worker.model_runner.model.load_weights(weights)


def _inner_model(llm: Any) -> nn.Module | None:
    """vLLM's model object when it lives in this process (colocated); attribute paths differ by version."""
    paths = ("llm_engine.model_executor.driver_worker.worker.model_runner.model",  # V1 in-process, V0 >= 0.7
             "llm_engine.model_executor.driver_worker.model_runner.model")  # older V0
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
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # keep the engine in this process
    return rank, world


class VLLMEngine:
    """EXPERIMENTAL (not yet run on a GPU here). vLLM rollouts colocated with training.

    cfg: the run `Config` (model path and dtype, rollout.vllm_*, run.seed). `llm` and
    `sampling_params_cls` replace vLLM's `LLM` and `SamplingParams` (a prebuilt engine, or
    fakes in CPU tests); by default both come from the `vllm` package.
    """

    def __init__(self, cfg: Any, model: nn.Module, tokenizer: Any, *, llm: Any = None,
                 sampling_params_cls: Callable[..., Any] | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = stop_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos_ids)
        if llm is None or sampling_params_cls is None:
            vllm = import_vllm()
            sampling_params_cls = sampling_params_cls or vllm.SamplingParams
            llm = llm if llm is not None else self._build_llm(vllm, cfg)
        self.llm = llm
        self.sampling_params_cls = sampling_params_cls
        self._synced: tuple | None = None
        self.sync(model)  # vLLM starts from the checkpoint on disk; the live module may differ

    @staticmethod
    def _build_llm(vllm: Any, cfg: Any) -> Any:
        from bridgerl.config import ConfigError
        from bridgerl.models.loading import resolve

        where, gguf = resolve(cfg.model)
        if gguf:
            raise ConfigError("rollout.engine=vllm needs a transformers model directory or hub id, not a GGUF "
                              "file; use rollout.engine=hf")
        if not torch.cuda.is_available():
            raise ConfigError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on this machine")
        rank, _ = _colocate_env()
        r = cfg.rollout
        kwargs: dict[str, Any] = {}
        if r.vllm_max_model_len is not None:
            kwargs["max_model_len"] = r.vllm_max_model_len
        return vllm.LLM(
            model=where,
            dtype=cfg.model.dtype,
            gpu_memory_utilization=r.vllm_gpu_memory_utilization,
            enable_prefix_caching=r.vllm_enable_prefix_caching,
            seed=cfg.run.seed + rank,  # ranks sample different streams
            distributed_executor_backend="external_launcher",  # in this process, beside training
            trust_remote_code=cfg.model.trust_remote_code,
            **kwargs,
        )

    def sync(self, model: nn.Module) -> None:
        """Push theta + w (merged) into vLLM's copy of the weights."""
        self.model = model
        inner = _inner_model(self.llm)
        if inner is not None:
            inner.load_weights(vllm_weight_items(model))  # streamed: one merged matrix at a time
        else:  # a newer layout: the public RPC, run by the in-process worker
            self.llm.collective_rpc(_load_on_worker, args=(list(vllm_weight_items(model)),))
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()  # cached prompt KV came from the old weights
        self._synced = weights_key(model)

    def generate(self, prompts: list[str], params: SamplingParams) -> Rollout:
        if weights_key(self.model) != self._synced:  # e.g. thetahat swapped in for evaluation
            self.sync(self.model)
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = encode_left_padded(self.tokenizer, prompts, device)
        requests = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids, prompt_mask)]
        sampling = self.sampling_params_cls(**to_vllm_sampling_kwargs(params, self.eos_ids))
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return rollout_from_outputs(outputs, prompt_ids, prompt_mask, n=params.n, eos_ids=self.eos_ids,
                                    pad_id=self.pad_id,
                                    decode=partial(self.tokenizer.batch_decode, skip_special_tokens=True))
