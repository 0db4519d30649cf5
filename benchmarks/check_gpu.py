"""One-command GPU check of the rollout engines: does vLLM sample the policy the trainer trains?

    pip install -e ".[vllm]"          # vLLM 0.33.0 pins torch 2.14.0 and transformers >=5.16.1,<5.21
    python benchmarks/check_gpu.py    # a few minutes; exit 1 if a check fails

With vLLM and a CUDA GPU, two models, each in its own process (one vLLM engine per process):
`embedded` (the shipped tiny-arith checkpoint: Llama, tied embeddings, pretrained) and `qwen2-bias`
(a small Qwen2 config: q/k/v biases, grouped KV heads, untied lm_head; random weights, saved to a
temporary directory). Each is run through `VLLMEngine` exactly as training builds it, in fp32 so
the comparisons can be tight, with sleep mode on (--sleep-level), on few-shot arithmetic prompts
(two KV blocks long, so the prefix cache is really used):

- sync:    the live policy is not the checkpoint (our LoRA with w != 0, theta moved); after the
           sync vLLM's prompt log-probs of HF's greedy rollouts equal HF's fp32 log-probs within
           --tol (max |diff| per token), and the checkpoint's log-probs do not (the check has teeth);
- greedy:  vLLM's greedy rollouts: the share identical to HF's (reported, not asserted: near-ties
           may flip) and their sampled-token log-probs against HF's (asserted);
- follow:  a weight change and a sync, then the same greedy prompts again (their KV is cached):
           vLLM's sampled-token log-probs equal HF's under the new weights, not the old ones
           (a prefix cache not reset after the sync fails here);
- sample:  n = G samples per prompt: rows grouped by prompt, the mask ends at the first EOS and
           only there, padding after it, lengths <= max_new_tokens, finish reasons, a finite
           sampler log-prob on every masked token within --tol of HF's, and the truncated
           importance weights the trainer would apply (TRL's metrics);
- cost:    engine build, sync and generate seconds, new tokens/s, peak GPU memory.

Without vLLM (or with --hf-only) it checks what a GPU without vLLM can: the HF engine's static
cache and static cache + torch.compile paths against plain generate (greedy agreement share,
asserted >= --min-agreement; tokens/s). Without a GPU it says so in one line and runs that HF
comparison on the CPU at a small size (no compile), which is all this machine can check.
Writes JSON to --out (default benchmarks/results/check_gpu.json) and prints it.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from _report import load_avg, write_report  # benchmarks/_report.py (the script's folder is on sys.path)

MODELS = ("embedded", "qwen2-bias")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {MODELS}")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--n", type=int, default=8, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--tol", type=float, default=1e-2, help="max |log-prob difference| per token, vLLM vs HF fp32")
    p.add_argument("--min-agreement", type=float, default=0.9, help="HF static / compiled vs plain greedy share")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.3)
    p.add_argument("--sleep-level", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--hf-only", action="store_true", help="skip vLLM even where it is installed")
    p.add_argument("--compile", action="store_true", help="also time static + compile on the CPU")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/check_gpu.json")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one model's vLLM check, in this process
    return p.parse_args(argv)


# -- models and prompts ---------------------------------------------------------------------------

def qwen2_bias_dir(tokenizer: Any, seed: int) -> str:
    """A small Qwen2 checkpoint (q/k/v biases, 2 KV heads for 4 query heads, untied lm_head), random
    weights at a scale that gives peaked next-token distributions, with the embedded tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, initializer_range=0.1, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # the point of this model
    where = tempfile.mkdtemp(prefix="bridgerl-qwen2-bias-")
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return where


def model_dir(name: str, seed: int) -> str:
    from bridgerl.config import ModelConfig
    from bridgerl.models.loading import resolve
    from bridgerl.models.tiny import build_tokenizer

    if name == "embedded":
        return resolve(ModelConfig())
    if name == "qwen2-bias":
        return qwen2_bias_dir(build_tokenizer(), seed)
    raise SystemExit(f"unknown model {name!r}; choose from {MODELS}")


def few_shot_prompts(k: int, tokenizer: Any) -> list[str]:
    """k arithmetic prompts, each after one solved example (~50 tokens: whole KV blocks get cached)."""
    from bridgerl.config import ArithConfig
    from bridgerl.tasks.arith import ArithTask
    from bridgerl.tasks.base import SFT_TRAIN, TEST, TEST_HARD, render_prompt

    task = ArithTask(ArithConfig(n_rl_train=0, n_sft_train=k, n_test=k, n_test_hard=k, n_val=0))
    questions = [e for pair in zip(task.split(TEST), task.split(TEST_HARD)) for e in pair][:k]
    return [render_prompt(task, d, tokenizer) + d.solution + "\n" + render_prompt(task, q, tokenizer)
            for d, q in zip(task.split(SFT_TRAIN), questions)]


def live_policy(where: str, device: str, seed: int):
    """The checkpoint in fp32 with our LoRA on (w != 0) and theta moved: a mid-training policy."""
    from bridgerl.config import LoraConfig, ModelConfig
    from bridgerl.models.loading import load
    from bridgerl.models.lora import attach_lora, lora_modules

    model, tok = load(ModelConfig(name_or_path=where, dtype="float32"), device)
    lc = LoraConfig()
    attach_lora(model, lc.targets, lc.r, lc.alpha)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_modules(model):
            b = layer.lora_B.weight
            b.copy_(0.05 * torch.randn(b.shape, generator=g).to(b))
    training_step(model, seed + 1, scale=0.01)
    return model.eval(), tok


@torch.no_grad()
def training_step(model: torch.nn.Module, seed: int, scale: float) -> None:
    """Move every parameter (theta and w) a little, as an optimizer step would."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g).to(p))


# -- comparisons ------------------------------------------------------------------------------------

@torch.no_grad()
def trainer_logp(model: torch.nn.Module, rollout: Any) -> torch.Tensor:
    """[B, C] the trainer's log-probs of the rollout's completion tokens (the loss's own function)."""
    from bridgerl.trainers.batch import from_rollout, sequence_logprobs

    return sequence_logprobs(model, from_rollout(rollout))[0].float()


def max_gap(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    m = mask.bool()
    return float((a.to(b) - b)[m].abs().max()) if m.any() else 0.0


def sequences(rollout: Any) -> list[list[int]]:
    return [p[pm.bool()].tolist() + c[cm.bool()].tolist() for p, pm, c, cm in
            zip(rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids, rollout.completion_mask)]


def prompt_logp_matrix(engine: Any, rollout: Any) -> torch.Tensor:
    """[B, C] vLLM's prompt log-probs of each row's completion tokens (prompt + completion scored whole)."""
    scored = engine.prompt_logprobs(sequences(rollout))
    out = torch.full(rollout.completion_ids.shape, math.nan)
    for i, (lp, n) in enumerate(zip(scored, rollout.completion_mask.sum(1).tolist())):
        out[i, :n] = torch.tensor(lp[len(lp) - n:])
    return out.to(rollout.completion_ids.device)


def greedy_agreement(a: Any, b: Any) -> float:
    """Share of rows whose completions (tokens up to and including EOS) are identical."""
    same = [torch.equal(x[m.bool()], y[k.bool()]) for x, m, y, k in
            zip(a.completion_ids, a.completion_mask, b.completion_ids, b.completion_mask)]
    return sum(same) / len(same)


def layout_problems(r: Any, prompt_ids: torch.Tensor, n: int, max_new: int, eos: set[int], pad: int) -> list[str]:
    """What is wrong with a sampled rollout's layout (empty when nothing is)."""
    problems = []
    if len(r) != prompt_ids.shape[0] * n:
        problems.append(f"{len(r)} rows for {prompt_ids.shape[0]} prompts x {n}")
    if not torch.equal(r.prompt_ids.cpu(), prompt_ids.cpu().repeat_interleave(n, 0)):
        problems.append("rows are not grouped by prompt")
    for i, (row, mask, reason) in enumerate(zip(r.completion_ids.tolist(), r.completion_mask.tolist(),
                                                r.finish_reasons)):
        k = sum(mask)
        if mask != [1] * k + [0] * (len(mask) - k) or not 1 <= k <= max_new:
            problems.append(f"row {i}: mask is not 1..{max_new} leading ones")
        elif any(t in eos for t in row[: k - 1]) or any(t != pad for t in row[k:]):
            problems.append(f"row {i}: EOS before the mask's end or tokens after it")
        elif reason != ("stop" if row[k - 1] in eos else "length"):
            problems.append(f"row {i}: finish reason {reason!r} does not match its last token")
    if r.sampler_logp is None or not torch.isfinite(r.sampler_logp[r.completion_mask.bool()]).all():
        problems.append("a masked token has no finite sampler log-prob")
    return problems


def timed(fn, *args, device: str = "cpu"):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn(*args)
    if device == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def check(passed: bool, **figures: Any) -> dict[str, Any]:
    return {"passed": bool(passed), **figures}


# -- the vLLM engine --------------------------------------------------------------------------------

def check_vllm(name: str, args: argparse.Namespace, device: str = "cuda") -> dict[str, Any]:
    """Every vLLM check on one model (see the module docstring); {"checks": {name: {passed, ...}}, ...}."""
    where = model_dir(name, args.seed)
    try:
        return _check_vllm(name, where, args, device)
    finally:
        if name != "embedded":  # a checkpoint written for this check
            shutil.rmtree(where, ignore_errors=True)


def _check_vllm(name: str, where: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    from bridgerl.algos import sampler_importance_weights
    from bridgerl.config import Config, ModelConfig
    from bridgerl.models.loading import load
    from bridgerl.rollout.base import SamplingParams
    from bridgerl.rollout.hf import HFEngine, encode_left_padded
    from bridgerl.rollout.vllm import VLLMEngine

    model, tok = live_policy(where, device, args.seed)
    checkpoint = load(ModelConfig(name_or_path=where, dtype="float32"), device)[0].eval()  # what vLLM loads
    prompts = few_shot_prompts(args.prompts, tok)
    cfg = Config()
    cfg.model.name_or_path, cfg.model.dtype, cfg.run.seed = where, "float32", args.seed
    r = cfg.rollout
    r.prompts_per_step, r.num_generations, r.max_new_tokens = args.prompts, args.n, args.max_new_tokens
    r.vllm_gpu_memory_utilization, r.vllm_sleep_level = args.gpu_memory_utilization, args.sleep_level
    greedy = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    sample = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, n=args.n)
    out: dict[str, Any] = {"model": name, "prompt_tokens": encode_left_padded(tok, prompts)[1].sum(1).tolist()}
    checks: dict[str, Any] = {}

    engine, out["build_s"] = timed(lambda: VLLMEngine(cfg, model, tok, prompts=prompts), device=device)
    hf = HFEngine(model, tok)
    ref = hf.generate(prompts, greedy)
    mask = ref.completion_mask
    live = trainer_logp(model, ref)
    gap = max_gap(prompt_logp_matrix(engine, ref), live, mask)
    teeth = max_gap(trainer_logp(checkpoint, ref), live, mask)
    checks["sync"] = check(gap <= args.tol and teeth > 10 * args.tol, max_logp_gap=gap, checkpoint_vs_live_gap=teeth)

    a, out["greedy_generate_s"] = timed(engine.generate, prompts, greedy, device=device)
    gap = max_gap(a.sampler_logp, trainer_logp(model, a), a.completion_mask)
    checks["greedy"] = check(gap <= args.tol, max_logp_gap=gap, agreement_with_hf=greedy_agreement(a, ref))

    before = copy.deepcopy(model)
    training_step(model, args.seed + 2, scale=0.02)
    _, out["sync_s"] = timed(engine.sync, model, device=device)
    b = engine.generate(prompts, greedy)  # the same prompts: their KV is in the prefix cache unless reset
    new = trainer_logp(model, b)
    gap = max_gap(b.sampler_logp, new, b.completion_mask)
    moved = max_gap(trainer_logp(before, b), new, b.completion_mask)
    checks["follow"] = check(gap <= args.tol and moved > 10 * args.tol, max_logp_gap=gap, weight_change_gap=moved)

    s, out["sample_generate_s"] = timed(engine.generate, prompts, sample, device=device)
    out["sample_new_tokens_per_s"] = float(s.completion_mask.sum()) / out["sample_generate_s"]
    problems = layout_problems(s, encode_left_padded(tok, prompts)[0], args.n, args.max_new_tokens,
                               engine.eos_ids, engine.pad_id)
    trainer = trainer_logp(model, s)
    gap = max_gap(s.sampler_logp, trainer, s.completion_mask)
    _, weights = sampler_importance_weights(trainer, s.sampler_logp, s.completion_mask,
                                            cap=r.vllm_importance_sampling_cap, mode=r.vllm_importance_sampling_mode)
    checks["sample"] = check(not problems and gap <= args.tol, problems=problems[:5], max_logp_gap=gap,
                             stop_share=s.finish_reasons.count("stop") / len(s),
                             mean_length=float(s.completion_mask.sum(1).float().mean()),
                             **{k: float(v) for k, v in weights.items()})
    if device == "cuda":
        free, total = torch.cuda.mem_get_info()
        out["gpu_used_mb"] = (total - free) / 2**20
        out["torch_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    out["checks"] = checks
    return out


def run_child(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """check_vllm in a fresh process: one vLLM engine (and its distributed state) per process."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "child.json"
        argv = [sys.executable, __file__, "--child", name, "--out", str(out), "--prompts", str(args.prompts),
                "--n", str(args.n), "--max-new-tokens", str(args.max_new_tokens), "--tol", str(args.tol),
                "--gpu-memory-utilization", str(args.gpu_memory_utilization),
                "--sleep-level", str(args.sleep_level), "--seed", str(args.seed)]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
            return {"model": name, "error": f"exit {proc.returncode}", "log_tail": tail,
                    "checks": {"ran": check(False)}}
        return json.loads(out.read_text())


# -- the HF engine's fast paths ---------------------------------------------------------------------

def check_hf(args: argparse.Namespace, device: str) -> dict[str, Any]:
    """Static cache (and static + compile) against plain dynamic-cache generate, on the embedded model."""
    from bridgerl.rollout.base import SamplingParams
    from bridgerl.rollout.hf import HFEngine

    model, tok = live_policy(model_dir("embedded", args.seed), device, args.seed)
    prompts = few_shot_prompts(args.prompts, tok)
    greedy = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=0.0)
    variants = {"static": dict(cache_implementation="static")}
    if device == "cuda" or args.compile:
        variants["static_compile"] = dict(cache_implementation="static", compile=True)
    ref, plain_s = timed(HFEngine(model, tok).generate, prompts, greedy, device=device)
    out: dict[str, Any] = {"device": device, "dynamic_call_s": plain_s,
                           "dynamic_new_tokens_per_s": float(ref.completion_mask.sum()) / plain_s, "checks": {}}
    for name, kwargs in variants.items():
        engine = HFEngine(model, tok, **kwargs)
        _, warm_s = timed(engine.generate, prompts, greedy, device=device)  # compiles / allocates
        r, call_s = timed(engine.generate, prompts, greedy, device=device)
        share = greedy_agreement(r, ref)
        out["checks"][name] = check(share >= args.min_agreement, agreement_with_dynamic=share, warmup_s=warm_s,
                                    call_s=call_s, new_tokens_per_s=float(r.completion_mask.sum()) / call_s)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.child:
        Path(args.out).write_text(json.dumps(check_vllm(args.child, args, device)))
        return 0
    has_vllm = importlib.util.find_spec("vllm") is not None
    import transformers

    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                              "torch": torch.__version__, "transformers": transformers.__version__,
                              "load_average": load_avg(), "args": {k: v for k, v in vars(args).items() if k != "child"}}
    if device == "cpu":
        print("no CUDA GPU here: the vLLM checks need one and are skipped; checking the HF engine's "
              "static-cache path against plain generate on the CPU instead (small size)", file=sys.stderr)
        args.prompts, args.max_new_tokens = min(args.prompts, 4), min(args.max_new_tokens, 16)
    elif not has_vllm or args.hf_only:
        print("vLLM not installed (pip install -e '.[vllm]'): checking only the HF engine's static-cache and "
              "compiled paths on the GPU", file=sys.stderr)
    if device == "cuda" and has_vllm and not args.hf_only:
        import vllm

        report["vllm_version"] = vllm.__version__
        report["vllm"] = {name: run_child(name, args) for name in args.models.split(",")}
    report["hf"] = check_hf(args, device)
    sections = [*report.get("vllm", {}).values(), report["hf"]]
    failed = [f"{s.get('model', 'hf')}/{k}" for s in sections for k, c in s["checks"].items() if not c["passed"]]
    report["failed"] = failed
    write_report(report, args.out)
    print("FAILED: " + ", ".join(failed) if failed else "all checks passed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
