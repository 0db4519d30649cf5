"""Rollout speed of each available engine: new tokens per second on one model, one workload.

    python benchmarks/rollout_speed.py                      # embedded model, CPU or GPU
    python benchmarks/rollout_speed.py --model /path/to/hf_dir --prompts 64 --max-new-tokens 512

Engines: HF generate with a dynamic KV cache (today's default), with a static cache, with a
static cache and a torch.compile'd decode step, and vLLM when it is importable and a GPU is
present. Every engine gets the same prompts, the same sampling settings (the RL defaults:
rollout.prompts_per_step prompts x rollout.num_generations samples, temperature 1) and the same
seed, and by default the same lengths: every completion runs to --max-new-tokens (EOS is
suppressed until then: HF `min_new_tokens`, vLLM `min_tokens`), so engines are compared on
equal work; --natural-length lets the model stop at EOS instead (the embedded base model
answers in ~4 tokens, which measures prefill and per-call overhead more than decoding).
By default our LoRA is attached (B random, as mid-training), because that is what
training rolls out with. Each engine runs one untimed warm-up call (compilation, CUDA graphs,
allocator) whose time is reported separately, then --repeats timed calls, interleaved across
engines (round-robin) so background load on a shared machine hits them all alike.

tokens_per_s counts generated tokens only (completion_mask: up to and including EOS), summed
over the timed calls, divided by their wall time; best_tokens_per_s is the fastest single call
(the better figure on a shared machine: the JSON records the load average at the start).
On GPU the model is cuda + bfloat16.
Writes JSON to --out (default benchmarks/results/rollout_speed.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from bridgerl.config import Config, LoraConfig, ModelConfig, RolloutConfig
from bridgerl.rollout.base import SamplingParams

ENGINES = ("hf_dynamic", "hf_static", "hf_static_compile", "vllm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = RolloutConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded", help="'embedded' or a local transformers model directory")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma list from {ENGINES}")
    p.add_argument("--prompts", type=int, default=d.prompts_per_step)
    p.add_argument("--n", type=int, default=d.num_generations, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per engine (after one warm-up)")
    p.add_argument("--natural-length", action="store_true", help="stop at EOS (default: run to max tokens)")
    p.add_argument("--no-lora", action="store_true", help="benchmark the bare model (no LoRA attached)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--vllm-gpu-memory-utilization", type=float, default=d.vllm_gpu_memory_utilization)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/rollout_speed.json")
    return p.parse_args(argv)


def make_prompts(k: int, seed: int) -> list[str]:
    """Arithmetic questions in the embedded task's format; any tokenizer can read them."""
    rng = random.Random(seed)
    return [f"Q:{'+'.join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 5)))}=\nA:" for _ in range(k)]


def load_model(args: argparse.Namespace, device: str, dtype: str) -> tuple[Any, Any, str, str]:
    """(model, tokenizer, directory vLLM can load, note). A missing embedded checkpoint falls back
    to the embedded architecture, randomly initialised (speed does not depend on the weights)."""
    from bridgerl.models.loading import ModelLoadError, load, resolve

    mcfg = ModelConfig(name_or_path=args.model, dtype=dtype)
    try:
        model, tok = load(mcfg, device)
        return model, tok, resolve(mcfg), ""
    except ModelLoadError:
        if args.model != "embedded":
            raise
    from bridgerl.models.loading import DTYPES
    from bridgerl.models.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    model = build_model(tok, seed=args.seed).to(device=device, dtype=DTYPES[dtype])
    where = tempfile.mkdtemp(prefix="bridgerl-bench-")
    model.save_pretrained(where)
    tok.save_pretrained(where)
    return model, tok, where, "embedded checkpoint not built: the embedded architecture, randomly initialised"


def attach(model: Any, seed: int) -> None:
    from bridgerl.models.lora import attach_lora, lora_modules

    lc = LoraConfig()
    attach_lora(model, lc.targets, lc.r, lc.alpha)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_modules(model):  # mid-training w: B != 0
            b = layer.lora_B.weight
            b.copy_(0.01 * torch.randn(b.shape, generator=g).to(b))


def build_engine(name: str, model: Any, tok: Any, args: argparse.Namespace, model_dir: str, dtype: str) -> Any:
    from bridgerl.rollout.hf import HFEngine

    if name == "hf_dynamic":
        return HFEngine(model, tok)
    if name == "hf_static":
        return HFEngine(model, tok, cache_implementation="static")
    if name == "hf_static_compile":
        return HFEngine(model, tok, cache_implementation="static", compile=True)
    import vllm

    from bridgerl.rollout.vllm import VLLMEngine

    cfg = Config()
    cfg.model.name_or_path, cfg.model.dtype, cfg.run.seed = model_dir, dtype, args.seed
    cfg.rollout.vllm_gpu_memory_utilization = args.vllm_gpu_memory_utilization
    engine = VLLMEngine(cfg, model, tok)
    if not args.natural_length:  # vLLM's twin of HF's min_new_tokens
        engine.sampling_params_cls = partial(vllm.SamplingParams, min_tokens=args.max_new_tokens)
    return engine


def skip_reason(name: str, device: str) -> str | None:
    if name != "vllm":
        return None
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vllm not installed (pip install bridgerl[vllm] on a CUDA machine)"
    return None if device == "cuda" else "vllm needs a CUDA GPU"


def sync_device(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed_call(engine: Any, prompts: list[str], params: SamplingParams, seed: int, device: str
               ) -> tuple[float, int, int]:
    """(seconds, generated tokens, rows stopped at EOS) of one generate call."""
    torch.manual_seed(seed)  # the same sampling stream for every engine
    t0 = time.perf_counter()
    r = engine.generate(prompts, params)
    sync_device(device)
    return time.perf_counter() - t0, int(r.completion_mask.sum()), sum(f == "stop" for f in r.finish_reasons)


def measure(engines: dict[str, Any], prompts: list[str], params: SamplingParams, repeats: int, seed: int,
            device: str) -> dict[str, dict[str, Any]]:
    """One warm-up call per engine, then `repeats` rounds with one timed call per engine each:
    interleaving spreads any background load on a shared machine evenly over the engines."""
    warmup = {name: timed_call(e, prompts, params, seed, device)[0] for name, e in engines.items()}
    calls: dict[str, list[tuple[float, int, int]]] = {name: [] for name in engines}
    for i in range(repeats):
        for name, e in engines.items():
            calls[name].append(timed_call(e, prompts, params, seed + 1 + i, device))
    rows = len(prompts) * params.n
    out = {}
    for name, cs in calls.items():
        times, tokens = [c[0] for c in cs], [c[1] for c in cs]
        out[name] = {
            "tokens_per_s": sum(tokens) / sum(times),
            "best_tokens_per_s": max(k / t for k, t in zip(tokens, times)),
            "warmup_s": warmup[name],
            "median_call_s": statistics.median(times),
            "calls_s": times,
            "new_tokens_per_call": tokens,
            "mean_completion_length": sum(tokens) / (repeats * rows),
            "stop_fraction": sum(c[2] for c in cs) / (repeats * rows),
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = "bfloat16" if device == "cuda" else "float32"
    names = [e.strip() for e in args.engines.split(",") if e.strip()]
    if unknown := [e for e in names if e not in ENGINES]:
        sys.exit(f"unknown engine(s) {unknown}; choose from {ENGINES}")

    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    model, tok, model_dir, note = load_model(args, device, dtype)
    if not args.no_lora:
        attach(model, args.seed)
    model.eval()
    if not args.natural_length:  # HF generate reads it from the generation config: no EOS before then
        model.generation_config.min_new_tokens = args.max_new_tokens
    prompts = make_prompts(args.prompts, args.seed)
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, n=args.n)

    skipped = {name: reason for name in names if (reason := skip_reason(name, device))}
    engines = {name: build_engine(name, model, tok, args, model_dir, dtype) for name in names if name not in skipped}
    measured = measure(engines, prompts, params, args.repeats, args.seed, device)
    results: dict[str, Any] = {}
    for name in names:
        if name in skipped:
            results[name] = {"skipped": skipped[name]}
            print(f"{name:18s} skipped: {skipped[name]}", flush=True)
            continue
        r = results[name] = measured[name]
        print(f"{name:18s} {r['tokens_per_s']:9.0f} new tokens/s  (best call {r['best_tokens_per_s']:.0f}/s, "
              f"median call {r['median_call_s']:.2f} s, warm-up {r['warmup_s']:.1f} s)", flush=True)

    import transformers

    report = {
        "model": args.model, "note": note, "lora": not args.no_lora, "device": device, "dtype": dtype,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "load_average_1min": load_avg,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "prompts": args.prompts, "n": args.n, "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature, "full_length": not args.natural_length, "repeats": args.repeats, "seed": args.seed, "engines": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
