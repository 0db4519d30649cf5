"""Fully sharded data parallelism (torch FSDP2, `fully_shard`): each rank stores 1/N of theta,
thetahat, the reference weights and their optimizer states.

Why it is needed: BRIDGE keeps two full copies of the base weights (theta and the shadow
thetahat), each with AdamW's two moments, plus the KL reference; at 8B parameters that is far
more than one GPU holds when every rank keeps everything (plain data parallelism).

How the recipes stay one code path:
- theta (+ w) is the model itself, sharded per decoder layer and at the root;
- thetahat and the KL reference are *modules* of their own (copies of the model made once,
  before sharding), since a sharded module gathers its own weights in its forward and cannot
  be called with swapped-in parameters (`torch.func.functional_call`, the unsharded path);
- the adapter w is left out of the sharding (`ignored_params`): it is small, one set of tensors
  that theta's module and the shadow's module share (the shadow module's LoRA parameters *are*
  the model's), and its gradient is summed over ranks by `Dist.reduce_grads` after the BRIDGE
  combination, as without sharding;
- gradients are reduce-scattered as sums (divide factor 1), because every loss is already
  normalised by counts taken over all ranks (see utils/distributed.py).

Turned on by `train.sharding=fsdp`, or by `accelerate launch --config_file
configs/accelerate/fsdp.yaml` (accelerate sets ACCELERATE_USE_FSDP), under `train.sharding=auto`.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from bridgerl.utils.distributed import env_flag


def wants_fsdp(mode: str, world: int) -> bool:
    """Whether to shard: "fsdp" always (with >1 process), "auto" when accelerate was launched with FSDP."""
    if world <= 1 or mode == "none":
        return False
    if mode == "fsdp":
        return True
    return env_flag("ACCELERATE_USE_FSDP")


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def layer_classes(model: nn.Module) -> set[str]:
    """The classes sharded one by one: accelerate's fsdp_transformer_layer_cls_to_wrap when set,
    else the decoder layers transformers marks as not to be split (`_no_split_modules`)."""
    wrap = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    if wrap.strip():
        return {name.strip() for name in wrap.split(",") if name.strip()}
    names = set(getattr(model, "_no_split_modules", None) or [])
    inner = getattr(model, "model", None)
    names |= set(getattr(inner, "_no_split_modules", None) or [])
    return names


def reshard_after_forward() -> bool:
    """accelerate's fsdp_reshard_after_forward (FSDP2 "true"/"false"; FSDP1's SHARD_GRAD_OP means false)."""
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").strip().lower()
    return value not in ("false", "0", "shard_grad_op", "2", "no_shard", "3")


def shard_module(module: nn.Module, ignored: set[nn.Parameter]) -> None:
    """fully_shard every decoder layer, then the root; gradients reduce as sums over ranks."""
    from torch.distributed.fsdp import fully_shard

    classes, reshard = layer_classes(module), reshard_after_forward()
    if not any(type(sub).__name__ in classes for sub in module.modules()):
        raise ValueError(f"FSDP: no module of class {sorted(classes)} in {type(module).__name__}; set "
                         "fsdp_transformer_layer_cls_to_wrap in the accelerate config to its decoder-layer class")
    for sub in list(module.modules()):
        if sub is not module and type(sub).__name__ in classes:
            fully_shard(sub, reshard_after_forward=reshard, ignored_params=ignored)
    fully_shard(module, reshard_after_forward=reshard, ignored_params=ignored)
    for sub in module.modules():
        if hasattr(sub, "set_gradient_divide_factor"):
            sub.set_gradient_divide_factor(1.0)
            sub.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo (CPU) has no PREMUL_SUM


@contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Within the block, a sharded module keeps each layer's weights whole after its first forward
    (torch's documented switch for evaluation: reshard_after_forward=False), so generation
    all-gathers once per call instead of once per decoded token; afterwards the layers go back to
    resharding after forward (the root never does, as FSDP2 sets it) and free the whole weights.
    A module that is not sharded passes through unchanged."""
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(model, FSDPModule):
        yield
        return
    model.set_reshard_after_forward(False)  # recursive: every sharded layer
    try:
        yield
    finally:
        reshard = reshard_after_forward()
        for sub in model.modules():
            if isinstance(sub, FSDPModule):
                if sub is not model:
                    sub.set_reshard_after_forward(reshard, recurse=False)
                sub.reshard()


def copy_with_shared(model: nn.Module, shared: dict[str, nn.Parameter], *, trainable: bool) -> nn.Module:
    """A deep copy of the (unsharded) model whose parameters named in `shared` are the model's own
    objects (the adapter w), and whose other parameters are fresh copies (thetahat, the reference)."""
    twin = copy.deepcopy(model)
    for name, param in shared.items():
        owner, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(owner), leaf, param)
    for name, p in twin.named_parameters():
        if name not in shared:
            p.requires_grad_(trainable)
    return twin


def full_tensors(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every parameter whole, on the CPU (a collective: every rank must call it in the same order)."""
    out = {}
    with torch.no_grad():
        for name, p in params.items():
            t = p.full_tensor() if is_sharded(p) else p
            out[name] = t.detach().cpu()
    return out


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor, or the tensor itself."""
    return t.to_local() if is_sharded(t) else t


def local_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """optimizer.state_dict() with every sharded state tensor replaced by this rank's shard."""
    state = optimizer.state_dict()
    state["state"] = {k: {n: local_tensor(v) if isinstance(v, torch.Tensor) else v for n, v in s.items()}
                      for k, s in state["state"].items()}
    return state


def load_local_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """The inverse of `local_optimizer_state`: shards become sharded tensors like their parameters."""
    from torch.distributed.tensor import DTensor

    optimizer.load_state_dict(state)
    for p, s in optimizer.state.items():
        if not is_sharded(p):
            continue
        for n, v in list(s.items()):
            if isinstance(v, torch.Tensor) and not is_sharded(v) and v.dim() > 0:
                s[n] = DTensor.from_local(v.to(p.device), p.device_mesh, p.placements,
                                          shape=p.shape, stride=p.stride())
