"""Loading causal LMs and tokenizers: the embedded testbed model, local directories, hub ids, GGUF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bridgerl.config import ModelConfig

EMBEDDED = "embedded"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(ValueError):
    """The model could not be loaded; one line naming the path and the fix."""


def embedded_path() -> Path:
    from bridgerl.models.tiny import EMBEDDED_DIR

    return Path(EMBEDDED_DIR)


def resolve(cfg: ModelConfig) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None), after checking local paths exist."""
    name, gguf = cfg.name_or_path, cfg.gguf_file
    if name == EMBEDDED:
        return str(embedded_path()), None
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model.name_or_path={name!r}: GGUF file not found; give an existing .gguf file")
        return str(path.parent), path.name
    # A hub id is "name" or "org/name"; anything else is a local path and must exist.
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelLoadError(
            f"model.name_or_path={name!r} not found; give a local transformers model directory, a hub id "
            f"(org/name), or 'embedded' for the shipped testbed model"
        )
    if path.is_dir() and gguf is None and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(path), ggufs[0].name
        raise ModelLoadError(f"model.name_or_path={name!r} has no config.json (and not exactly one .gguf file); "
                             f"point it at a transformers model directory")
    return (str(path) if path.is_dir() else name), gguf


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    where, gguf = resolve(cfg)
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=cfg.trust_remote_code, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {cfg.name_or_path!r}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:  # many base LMs ship none; padding positions are masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    where, gguf = resolve(cfg)
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code, **kwargs
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a model from {cfg.name_or_path!r}: {str(exc).splitlines()[0]}") from None
    model.to(device)
    # Sampling flags live in our SamplingParams; a checkpoint's generation_config must not
    # silently add top_k or repetition penalties to RL rollouts.
    gen = model.generation_config
    gen.top_k, gen.top_p, gen.temperature, gen.do_sample = None, None, None, False
    if getattr(gen, "repetition_penalty", None) not in (None, 1.0):
        gen.repetition_penalty = None
    return model


def load(cfg: ModelConfig, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Any]:
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, device)
    return model, tokenizer
