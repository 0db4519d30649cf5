"""What crosses the boundary to vLLM, as pure functions (no vLLM import; tested on CPU).

In: the merged weights theta + w under plain transformers names (`vllm_weight_items`), the
sampling flags (`to_vllm_sampling_kwargs`). Out: vLLM's `RequestOutput`s laid out as the HF
engine's `Rollout`, with the sampled tokens' log-probs (`rollout_from_outputs`). Field names
and semantics are vLLM 0.33.0's (vllm/sampling_params.py, vllm/outputs.py, vllm/logprobs.py,
vllm/v1/engine/__init__.py); tests/rollout/fake_vllm.py mirrors them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import nn

from bridgerl.models.lora import LoRALinear, is_lora_param
from bridgerl.rollout.base import Rollout, SamplingParams

# Name parts added by wrappers around the transformers model (never part of a checkpoint name).
_WRAPPER_PARTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")

# vLLM's finish reasons (v1/engine FINISH_REASON_STRINGS): "stop", "length", "abort", "error",
# "repetition". Only the first two end a sample of the policy; the others are failures.
FINISHED = ("stop", "length")


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


def check_tied_lora(model: nn.Module, targets: Iterable[str] = ()) -> None:
    """ConfigError if a LoRA sits, or would sit (`targets`, lora.targets), on a weight tied to the
    input embeddings. vllm_weight_items sends a tied weight once, under the embeddings' name,
    and vLLM ties lm_head to it again: the adapter's delta would be dropped from every sync."""
    from bridgerl.config import ConfigError

    embeddings = model.get_input_embeddings()
    tied = [name for name, m in model.named_modules()
            if m is not embeddings and getattr(m, "weight", None) is embeddings.weight]
    if not tied:
        return
    names = {n.rsplit(".", 1)[-1] for n in tied if not n.endswith(".base_layer")}
    names |= {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if m is embeddings}
    hit = set(targets) & names
    hit |= {n.rsplit(".", 1)[-1] for n, m in model.named_modules()
            if isinstance(m, LoRALinear) and m.base_layer.weight is embeddings.weight}
    if hit:
        raise ConfigError(f"rollout.engine=vllm cannot serve a LoRA on {', '.join(sorted(hit))}: its weight is tied "
                          f"to the input embeddings, which vLLM ties again, so the adapter would be dropped from "
                          f"every weight sync; remove it from lora.targets or use rollout.engine=hf")


# -- sampling: our SamplingParams -> vllm.SamplingParams keyword arguments ------------------------

def to_vllm_sampling_kwargs(params: SamplingParams, eos_ids: Iterable[int]) -> dict[str, Any]:
    """The vLLM sampling flags that reproduce the HF engine's sampling.

    Greedy (temperature 0) asks for one completion per prompt: the n greedy copies are
    identical, and `rollout_from_outputs` repeats it. No top-k (vLLM's default is off, as
    HF's top_k=0). Generation stops at every EOS id (tokenizer + generation config).
    logprobs=0: the log-prob of each sampled token only (what the importance correction
    needs; vLLM always adds the sampled token to the top-k it is asked for). detokenize=False:
    the engine decodes with our tokenizer anyway, so vLLM's detokenizer would be wasted work.
    """
    return {
        "n": 1 if params.greedy else params.n,
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_new_tokens,
        "stop_token_ids": sorted(eos_ids),
        "logprobs": 0,
        "detokenize": False,
    }


# -- outputs: vLLM RequestOutputs -> our Rollout layout -------------------------------------------

def token_logprob(logprobs: Any, position: int, token: int) -> float:
    """The sampled token's log-prob at one position of a CompletionOutput's `logprobs` (a list of
    {token id: Logprob} dicts, or vLLM's FlatLogprobs, which indexes the same way); NaN if absent."""
    if logprobs is None or position >= len(logprobs):
        return math.nan
    entry = logprobs[position] or {}
    found = entry.get(token)
    return math.nan if found is None else float(found.logprob)


def _completion_tokens(completion: Any, eos_ids: set[int]) -> tuple[list[int], bool, list[float]]:
    """(tokens up to and including the first EOS, stopped at EOS?, their sampler log-probs) of one
    vLLM CompletionOutput."""
    ids = list(completion.token_ids)
    logps = [token_logprob(completion.logprobs, i, t) for i, t in enumerate(ids)]
    for i, t in enumerate(ids):
        if t in eos_ids:
            return ids[: i + 1], True, logps[: i + 1]
    # A stop token that vLLM reports in stop_reason but left out of token_ids: put it back, so
    # the training mask covers the EOS as in the HF engine (its log-prob is unknown: NaN).
    stop = getattr(completion, "stop_reason", None)
    if completion.finish_reason == "stop" and isinstance(stop, int) and stop in eos_ids:
        return ids + [stop], True, logps + [math.nan]
    return ids, completion.finish_reason == "stop", logps


def rollout_from_outputs(outputs: list[Any], prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, *, n: int,
                         eos_ids: Iterable[int], pad_id: int,
                         decode: Callable[[torch.Tensor], list[str]] | None = None) -> Rollout:
    """One `Rollout` (HF engine layout) from vLLM's `LLM.generate` outputs, one per prompt in order.

    outputs:     RequestOutputs; `.outputs` holds CompletionOutputs with `index`, `token_ids`,
                 `text`, `logprobs` (None, or one {token id: Logprob} per token), `finish_reason`
                 ("stop" | "length"; anything else raises), `stop_reason`
    prompt_ids:  [P_rows, P] left-padded prompts as sent; prompt_mask the same shape
    n:           completions per prompt wanted; a single (greedy) completion is repeated n times
    decode:      completion ids [B, C] (pad after EOS) -> texts; None = vLLM's own `.text`
    The Rollout's sampler_logp [B, C] holds the sampled tokens' log-probs (NaN where vLLM gave
    none), or is None when no completion carried log-probs.
    """
    eos = set(eos_ids)
    if len(outputs) != prompt_ids.shape[0]:
        raise ValueError(f"{len(outputs)} vLLM outputs for {prompt_ids.shape[0]} prompts")
    failed = sorted({str(c.finish_reason) for out in outputs for c in out.outputs if c.finish_reason not in FINISHED})
    if failed:
        raise RuntimeError(f"vLLM ended completions with finish_reason {', '.join(failed)} (not a sample of the "
                           f"policy: an aborted or failed request); see vLLM's log above")
    rows: list[list[int]] = []
    logps: list[list[float]] = []
    stopped: list[bool] = []
    texts: list[str] = []
    has_logprobs = False
    for out in outputs:
        completions = sorted(out.outputs, key=lambda c: getattr(c, "index", 0))
        if len(completions) == 1 and n > 1:
            completions = completions * n
        if len(completions) != n:
            raise ValueError(f"a prompt got {len(completions)} completions, expected {n}")
        for c in completions:
            ids, stop, lp = _completion_tokens(c, eos)
            rows.append(ids)
            logps.append(lp)
            stopped.append(stop)
            texts.append(c.text)
            has_logprobs |= c.logprobs is not None
    device = prompt_ids.device
    width = max(1, max(len(r) for r in rows))
    completion_ids = torch.full((len(rows), width), pad_id, dtype=prompt_ids.dtype)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.long)
    sampler_logp = torch.full((len(rows), width), math.nan, dtype=torch.float32)
    for i, (ids, lp) in enumerate(zip(rows, logps)):
        completion_ids[i, : len(ids)] = torch.tensor(ids, dtype=prompt_ids.dtype)
        completion_mask[i, : len(ids)] = 1
        sampler_logp[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
    completion_ids, completion_mask = completion_ids.to(device), completion_mask.to(device)
    return Rollout(
        prompt_ids=prompt_ids.repeat_interleave(n, dim=0),
        prompt_mask=prompt_mask.repeat_interleave(n, dim=0),
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        texts=decode(completion_ids) if decode is not None else texts,
        finish_reasons=["stop" if s else "length" for s in stopped],
        sampler_logp=sampler_logp.to(device) if has_logprobs else None,
    )
