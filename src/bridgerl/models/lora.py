"""The LoRA adapter w: trained jointly with the full base weights theta (method.md section 2).

Why not peft's LoRA layer for the forward pass: peft computes `base(x) + B(A(x))`, two extra
thin matmuls on every token, which costs ~60% of a forward/backward at tiny widths
(testbed-notes). With dropout 0 (the paper's setting) LoRA is exactly the merged weight
W + s * B @ A, which costs one r-rank product per layer per pass, independent of the batch.
So `LoRALinear` computes the merged weight (gradients still reach W, A and B through it) and
falls back to the unmerged form only when dropout is on. Parameter names and the saved
adapter follow peft's format (`lora_A.weight`, `lora_B.weight`, `adapter_config.json`), so
`peft.PeftModel.from_pretrained` loads our w, and a test checks our forward against peft's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn


class LoRALinear(nn.Module):
    """y = x (W + s B A)^T + b, with s = alpha / r; A: [r, in], B: [out, r] (B = 0 at init)."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0, merged: bool = True) -> None:
        super().__init__()
        # merged: train through the merged weight W + s B A (fast where layers are narrow; holds one merged
        # copy of the weight per layer until the backward pass); False: base(x) + s B(A(x)), peft's formula
        self.merged = merged
        self.base_layer = base_layer
        factory = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **factory)
        # peft's default init: A kaiming-uniform(a=sqrt(5)), B zeros, so w starts as a no-op.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._cache_enabled = self._cache_grad = False
        self._cached: torch.Tensor | None = None

    def merged_weight(self) -> torch.Tensor:
        # [out, in] = [out, in] + s * [out, r] @ [r, in]
        return self.base_layer.weight + self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (isinstance(self.dropout, nn.Dropout) and self.training) or (not self.merged and torch.is_grad_enabled()):
            return self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(self.dropout(x)))
        if self._cache_enabled and (self._cache_grad or not torch.is_grad_enabled()):
            # Generation calls forward once per new token with unchanged weights: merge once.
            if self._cached is None:
                self._cached = self.merged_weight()
            return F.linear(x, self._cached, self.base_layer.bias)
        return F.linear(x, self.merged_weight(), self.base_layer.bias)


def attach_lora(model: nn.Module, targets: list[str], r: int, alpha: float, dropout: float = 0.0,
                merged: bool = True) -> list[str]:
    """Replace every nn.Linear whose name ends with one of `targets` by a LoRALinear, in place.

    Returns the replaced module names. Raises ValueError if no module matches (a typo in
    lora.targets would otherwise train no adapter at all).
    """
    replaced = []
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(module, r, alpha, dropout, merged))
            replaced.append(name)
    if not replaced:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"lora.targets={targets} match no linear layer; this model's linear layers: {linear}")
    return replaced


def is_lora_param(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def split_params(model: nn.Module) -> tuple[dict[str, nn.Parameter], dict[str, nn.Parameter]]:
    """Disjoint groups by name: (theta = every other trainable parameter, w = LoRA A and B)."""
    theta, lora = {}, {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            (lora if is_lora_param(name) else theta)[name] = p
    return theta, lora


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


@contextmanager
def merge_cache(model: nn.Module, grad: bool = False) -> Iterator[None]:
    """Within the block (forwards with fixed weights: one generate call, decoding token by token;
    with grad=True, the passes of one micro-batch before its backward), each LoRA layer merges its
    weight once and reuses it, graph included, instead of merging once per forward."""
    layers = [m for _, m in lora_modules(model)]
    for m in layers:
        m._cache_enabled, m._cache_grad, m._cached = True, grad, None
    try:
        yield
    finally:
        for m in layers:
            m._cache_enabled, m._cache_grad, m._cached = False, False, None


def merged_state_dict(model: nn.Module, overrides: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The plain transformers state dict of theta + w merged (names without LoRA wrappers).

    `overrides` replaces base parameters by name (e.g. the shadow thetahat) before merging.
    """
    overrides = dict(overrides or {})
    # A tied weight (lm_head = embed_tokens) has one parameter name but two state-dict keys: the
    # override must reach both, or the alias keeps theta's value and wins when the copy re-ties.
    by_param = {id(p): overrides[n] for n, p in model.named_parameters() if n in overrides}
    state = {}
    with torch.no_grad():
        for name, tensor in model.state_dict(keep_vars=True).items():
            if is_lora_param(name):
                continue
            state[name] = overrides.get(name, by_param.get(id(tensor), tensor)).detach().clone()
        for name, layer in lora_modules(model):
            w_key = f"{name}.base_layer.weight"
            base = overrides.get(w_key, layer.base_layer.weight)
            state[w_key] = (base + layer.scaling * (layer.lora_B.weight @ layer.lora_A.weight)).detach().clone()
    return {k.replace(".base_layer.", "."): v for k, v in state.items()}


def save_adapter(model: nn.Module, out_dir: str | Path, *, targets: list[str], r: int, alpha: float,
                 dropout: float, base_model_name_or_path: str | None = None) -> None:
    """Save w in peft's format: adapter_config.json + adapter_model.safetensors."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in lora_modules(model):
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.weight.detach().cpu().contiguous()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.weight.detach().cpu().contiguous()
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": sorted(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }
    (out_dir / "adapter_config.json").write_text(json.dumps(config, indent=2))


def save_merged(model: nn.Module, tokenizer, out_dir: str | Path,
                overrides: dict[str, torch.Tensor] | None = None) -> None:
    """Save theta + w merged as a plain transformers checkpoint (loads with no peft).

    A fresh model of the same config receives the merged weights, so what is saved has exactly
    the architecture transformers (and vLLM) expect, whatever wrappers training added.
    """
    from transformers import AutoModelForCausalLM

    state = merged_state_dict(model, overrides)
    plain = AutoModelForCausalLM.from_config(model.config, dtype=next(model.parameters()).dtype)
    missing, unexpected = plain.load_state_dict(state, strict=False)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    if unexpected or [k for k in missing if k not in tied and not _is_tied(plain, k)]:
        raise RuntimeError(f"merged weights do not fit the model: missing={missing} unexpected={unexpected}")
    plain.generation_config = model.generation_config
    plain.save_pretrained(str(out_dir))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def _is_tied(model: nn.Module, key: str) -> bool:
    # e.g. lm_head.weight tied to the input embeddings: saved once, restored by tying.
    return key == "lm_head.weight" and bool(getattr(model.config, "tie_word_embeddings", False))


@contextmanager
def swapped(params: dict[str, nn.Parameter], replacement: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily give `params` the values of `replacement` (same names), e.g. to evaluate
    the shadow thetahat with the shared w; the parameter objects (and optimizers) are untouched."""
    with torch.no_grad():
        saved = {n: params[n].data for n in replacement}
        for n, t in replacement.items():
            params[n].data = t.data
    try:
        yield
    finally:
        with torch.no_grad():
            for n, t in saved.items():
                params[n].data = t
