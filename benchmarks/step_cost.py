"""Cost of one BRIDGE step against one GRPO step on the same batch: time per phase, peak memory.

    python benchmarks/step_cost.py                              # embedded model, CPU fp32, natural + forced lengths
    python benchmarks/step_cost.py --lengths natural --steps 16
    python benchmarks/step_cost.py --device cuda                 # GPU: model.dtype=bfloat16 unless --dtype
    python benchmarks/step_cost.py --override model.name_or_path=runs/bridge/final   # a trained model's lengths

method.md section 4: one BRIDGE iteration is one generation + three forward/backward passes (SFT
at theta+w, RL at theta+w, RL at the shadow thetahat+w) and three optimizer steps; one GRPO step
is one generation + one pass + one optimizer step. With G the generation time and T the GRPO
pass, the floor of the time ratio is (G + 3T) / (G + T), if the SFT and shadow passes each cost
about T. This script measures the real ratio and where it departs from that floor
(floor_time_ratio, over_floor = time_ratio / floor - 1); since the SFT pass runs on its own,
usually smaller batch, it also reports the floor with the SFT pass as measured,
(G + 2T + S) / (G + T) (floor_time_ratio_measured_sft).

Time (in this process): both recipes are built with `bridgerl.trainers.loop.setup(cfg)` from the
default config (16 prompts x 8 samples, <= 48 new tokens, SFT batch 32, LoRA r=16 on every
linear layer for bridge) plus any --override, and stepped with `STEPS["grpo"]` / `STEPS["bridge"]`,
alternately (who goes first alternates too), so machine noise hits both alike. Each phase is
timed by the trainer's own `st.timer` (generate, grade, sft_fwd_bwd, rl_fwd_bwd, shadow_fwd_bwd,
optim); "other" is the step's wall time minus its phases (prompt sampling, SFT batch
tokenisation, gradient bookkeeping). Figures are medians over --steps steps after --warmup.

Same batch: both recipes draw the same prompt indices (same run.seed, same sampler), and the
torch RNG is re-seeded identically before each recipe's step i. By default the learning rates
are set to 1e-30 (the weights do not move in fp32, every kernel still runs: the cost of a step
does not depend on the weights' values), so the two recipes sample bit-identical rollouts at
every step; "same_rollouts" reports the fraction of steps where the completion tokens matched.
--train-weights keeps the configured learning rates instead (rollouts then drift apart).

Lengths: generation time follows the completion length, and the embedded base model answers in
~4 tokens where a bridge-trained model writes ~25-token chains. "natural" lets the model stop at
EOS; "forced" makes every completion exactly rollout.max_new_tokens tokens long (transformers'
documented `min_new_tokens` generation option, set on the model's generation config, which our
HF engine's `generate` call reads; it suppresses EOS until then). --lengths both (default) runs
both; the top-level figures are the first mode's ("headline_lengths"). Note that BRIDGE's SFT
pass runs on a different batch (32 expert chains) than the RL passes (128 rollouts), so the
per-pass times and batch sizes are reported alongside the ratios.

Memory: each recipe x length mode runs in a fresh subprocess (--mem-steps steps), started
before this process imports torch (a child's getrusage peak includes what it inherited at
fork), so one does not pollute the other: peak resident set (resource.getrusage ru_maxrss, the
whole process) and, on CUDA, torch.cuda.max_memory_allocated after setup; plus the resident set
right after setup (baseline), the peak during the steps alone (Linux: VmHWM after resetting it
through /proc/self/clear_refs), and the bytes held by parameters, gradients and optimizer state
(counted from the tensors). memory_ratio is the CUDA peak ratio on GPU and the peak-RSS ratio on
CPU; on CPU with the 0.5M-parameter embedded model the resident set is the libraries, so that
ratio is ~1 by construction: read memory_ratio_above_baseline and state_ratio there.

Threads: --threads 1 by default. On a shared 2-core machine two OpenMP threads make every step
10-40x slower, on and off, whenever another process runs (measured: 0.3 s vs 9-14 s per GRPO
step); one thread degrades gracefully. Both recipes always run with the same thread count.

Paper figures (method.md section 7, whole training runs vs RL-zero, wall time to the end of
training and peak GPU memory; not per step): Qwen2.5-3B 1.13x time, 1.14x memory.

Writes JSON to --out (default benchmarks/results/step_cost.json) and prints it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import load_avg, write_report  # benchmarks/_report.py (the script's folder is on sys.path)

RECIPES = ("grpo", "bridge")
PAPER = {
    "time_ratio": 1.13, "memory_ratio": 1.14,
    "source": "method.md section 7 (Qwen2.5-3B: bridge 6.9 h / 59.3 GB vs rl-zero 6.1 h / 52.2 GB; "
              "Qwen3-8B-Base: 33.5 h / 67.4 GB vs 38.5 h / 50.7 GB, i.e. 0.87x time, 1.33x memory)",
    "note": "whole training runs to the end (time) and peak GPU memory, not one step on the same batch",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="model.dtype (default: float32 on cpu, bfloat16 on cuda)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per recipe and length mode")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per recipe and length mode")
    p.add_argument("--lengths", choices=("natural", "forced", "both"), default="both")
    p.add_argument("--force-length", action="store_true", help="shorthand for --lengths forced")
    p.add_argument("--mem-steps", type=int, default=3, help="steps run by each memory subprocess")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--train-weights", action="store_true",
                   help="keep the configured learning rates (default: 1e-30, so both recipes see the same rollouts)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for both recipes (repeatable), e.g. model.name_or_path=...")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1, see the docstring; 0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/step_cost.json")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)  # "recipe:mode:path", internal
    args = p.parse_args(argv)
    if args.force_length:
        args.lengths = "forced"
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def modes(args: argparse.Namespace) -> list[str]:
    return ["natural", "forced"] if args.lengths == "both" else [args.lengths]


def prepare_torch(args: argparse.Namespace):
    # bridgerl's init_distributed picks CUDA whenever it exists; ACCELERATE_USE_CPU keeps a CPU run on the CPU.
    if args.device == "cpu":
        os.environ["ACCELERATE_USE_CPU"] = "true"
    else:
        os.environ.pop("ACCELERATE_USE_CPU", None)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device visible")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    return torch


def build(recipe: str, args: argparse.Namespace):
    from bridgerl.config_load import load_config
    from bridgerl.trainers.loop import setup

    overrides = [f"recipe={recipe}", f"run.seed={args.seed}", f"model.dtype={args.dtype}", *args.override]
    if not args.train_weights:
        overrides += ["optim.lr=1e-30", "optim.lora_lr=1e-30", "optim.shadow_lr=1e-30"]
    cfg = load_config(None, overrides)
    st, _ = setup(cfg)
    if str(st.device) != args.device and not str(st.device).startswith(args.device):
        raise RuntimeError(f"state built on {st.device}, expected {args.device}")
    record = {}
    generate = st.engine.generate

    def recording_generate(prompts, params):  # keeps the last rollout to compare recipes (no copy)
        rollout = generate(prompts, params)
        record["rollout"] = rollout
        return rollout

    st.engine.generate = recording_generate  # instance attribute: the engine class is untouched
    return cfg, st, record


def set_length(st, mode: str, max_new_tokens: int) -> None:
    # transformers' generate reads min_new_tokens from the model's generation config: no EOS before it.
    st.model.generation_config.min_new_tokens = max_new_tokens if mode == "forced" else None


def seed_step(torch, seed: int, i: int) -> None:
    torch.manual_seed(seed * 1_000_003 + i)  # also seeds every CUDA device


def one_step(torch, recipe: str, st, record: dict) -> dict[str, Any]:
    from bridgerl.trainers.recipes import STEPS

    cuda = st.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    metrics = STEPS[recipe](st)
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    st.step += 1
    phases = {k.removeprefix("time/"): v for k, v in st.timer.pop().items()}
    rollout = record.pop("rollout")
    ids = rollout.completion_ids.detach().cpu().contiguous()
    return {"step_s": dt, "phases": phases, "mean_length": metrics["completions/mean_length"],
            "completion_tokens": int(rollout.completion_mask.sum()), "rows": len(rollout),
            "prompt_width": rollout.prompt_ids.shape[1], "completion_width": rollout.completion_ids.shape[1],
            "fingerprint": hashlib.sha1(ids.numpy().tobytes() + bytes(str(tuple(ids.shape)), "ascii")).hexdigest()}


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = sorted({k for r in rows for k in r["phases"]})
    phases = {k: median([r["phases"].get(k, 0.0) for r in rows]) for k in names}
    phases["other"] = median([r["step_s"] - sum(r["phases"].values()) for r in rows])
    return {"step_s": median([r["step_s"] for r in rows]), "phase_medians_s": phases,
            "mean_completion_length": statistics.fmean(r["mean_length"] for r in rows),
            "rl_rows": rows[0]["rows"], "steps_s": [r["step_s"] for r in rows],
            "rl_prompt_width": median([r["prompt_width"] for r in rows]),
            "rl_completion_width": median([r["completion_width"] for r in rows])}


def sft_batch_shape(st) -> dict[str, Any]:
    """The size of one SFT batch (drawn from a copy of the sampler: the run's own position is untouched)."""
    from bridgerl.tasks.base import render_prompt
    from bridgerl.trainers.batch import encode_pairs
    from bridgerl.trainers.state import Sampler

    sampler = Sampler(st.sft_sampler.n, st.cfg.run.seed + 1)
    examples = [st.sft_examples[i] for i in sampler.take(st.cfg.train.sft_batch_size)]
    batch = encode_pairs(st.tokenizer, [render_prompt(st.task, e, st.tokenizer) for e in examples],
                         [e.solution for e in examples])
    return {"rows": len(batch), "completion_tokens": batch.num_tokens,
            "mean_completion_length": batch.num_tokens / len(batch),
            "prompt_width": batch.prompt_ids.shape[1], "completion_width": batch.completion_ids.shape[1]}


def time_mode(torch, args, states, mode: str) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {r: [] for r in RECIPES}
    warm: dict[str, list[float]] = {r: [] for r in RECIPES}
    for _, (cfg, st, _) in states.items():
        set_length(st, mode, cfg.rollout.max_new_tokens)
    same = []
    for i in range(args.warmup + args.steps):
        order = RECIPES if i % 2 == 0 else RECIPES[::-1]
        step_rows = {}
        for recipe in order:
            _, st, record = states[recipe]
            seed_step(torch, args.seed, i)
            step_rows[recipe] = one_step(torch, recipe, st, record)
        if i < args.warmup:
            for r in RECIPES:
                warm[r].append(step_rows[r]["step_s"])
            continue
        for r in RECIPES:
            rows[r].append(step_rows[r])
        same.append(step_rows["grpo"]["fingerprint"] == step_rows["bridge"]["fingerprint"])
        print(f"[{mode}] step {i - args.warmup + 1}/{args.steps}: grpo {step_rows['grpo']['step_s']:.3f} s, "
              f"bridge {step_rows['bridge']['step_s']:.3f} s", file=sys.stderr, flush=True)

    g, b = summarise(rows["grpo"]), summarise(rows["bridge"])
    g["warmup_s"], b["warmup_s"] = warm["grpo"], warm["bridge"]
    G, T = g["phase_medians_s"]["generate"], g["phase_medians_s"]["rl_fwd_bwd"]
    floor = (G + 3 * T) / (G + T)
    time_ratio = b["step_s"] / g["step_s"]
    bp = b["phase_medians_s"]
    passes = {"grpo_rl_fwd_bwd_T": T, "bridge_sft_fwd_bwd": bp.get("sft_fwd_bwd"),
              "bridge_rl_fwd_bwd": bp.get("rl_fwd_bwd"), "bridge_shadow_fwd_bwd": bp.get("shadow_fwd_bwd")}
    # The floor counts the SFT pass as one more T; on the default config it runs 32 expert chains
    # against 128 rollouts, so it costs less: the same floor with the SFT pass as measured.
    S = bp.get("sft_fwd_bwd", T)
    floor_sft = (G + 2 * T + S) / (G + T)
    return {
        "lengths": mode,
        "time_ratio": time_ratio,
        "time_ratio_paired_median": median([rb["step_s"] / rg["step_s"]
                                            for rb, rg in zip(rows["bridge"], rows["grpo"])]),
        "floor_time_ratio": floor,
        "over_floor": time_ratio / floor - 1,
        "floor_time_ratio_measured_sft": floor_sft,
        "over_floor_measured_sft": time_ratio / floor_sft - 1,
        "G_generate_s": G, "T_grpo_rl_fwd_bwd_s": T,
        "per_pass_s": passes,
        "per_pass_over_T": {k: (v / T if v is not None else None) for k, v in passes.items()},
        "generate_ratio_bridge_over_grpo": bp["generate"] / G,
        "optim_ratio_bridge_over_grpo": bp["optim"] / g["phase_medians_s"]["optim"],
        "same_rollouts": sum(same) / len(same),
        "rl_batch": {"rows": g["rl_rows"], "prompt_width": g["rl_prompt_width"],
                     "completion_width": g["rl_completion_width"],
                     "mean_completion_length_grpo": g["mean_completion_length"],
                     "mean_completion_length_bridge": b["mean_completion_length"]},
        "grpo": g, "bridge": b,
    }


def state_bytes(st) -> dict[str, float]:
    """Bytes held by parameters (incl. LoRA and the shadow), their gradients, and optimizer state."""
    params = {id(p): p for p in st.model.parameters()}
    params.update({id(p): p for p in (st.shadow or {}).values()})
    trainable = [p for p in params.values() if p.requires_grad]
    mb = 2**20
    p_bytes = sum(p.numel() * p.element_size() for p in params.values())
    g_bytes = sum(p.numel() * p.element_size() for p in trainable)  # live during the step (zeroed after)
    o_bytes = sum(t.numel() * t.element_size() for opt in st.optimizers.values() for s in opt.state.values()
                  for t in s.values() if hasattr(t, "numel"))
    return {"params_mb": p_bytes / mb, "grads_mb": g_bytes / mb, "optimizer_mb": o_bytes / mb,
            "total_mb": (p_bytes + g_bytes + o_bytes) / mb,
            "params": sum(p.numel() for p in params.values())}


def worker(args: argparse.Namespace) -> None:
    """One recipe, one length mode, fresh process: peak memory."""
    recipe, mode, path = args._worker.split(":", 2)
    torch = prepare_torch(args)
    from bridgerl.utils.memory import peak_rss_mb, proc_status_mb, reset_peak_memory, vm_hwm_mb

    cfg, st, record = build(recipe, args)
    set_length(st, mode, cfg.rollout.max_new_tokens)
    out: dict[str, Any] = {"setup_peak_rss_mb": vm_hwm_mb(), "baseline_rss_mb": proc_status_mb("VmRSS")}
    reset = reset_peak_memory()
    if st.device.type == "cuda":
        torch.cuda.synchronize()
        out["baseline_cuda_mb"] = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    steps = []
    for i in range(args.mem_steps):
        seed_step(torch, args.seed, i)
        steps.append(one_step(torch, recipe, st, record)["step_s"])
    out["peak_rss_mb"] = peak_rss_mb()  # resource.getrusage: the whole process's peak (import and load included)
    out["steps_peak_rss_mb"] = vm_hwm_mb() if reset else None  # peak since the reset after setup
    if st.device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20  # since setup (the weights stay allocated)
    out["state"] = state_bytes(st)
    out["steps_s"] = steps
    Path(path).write_text(json.dumps(out))


def memory(args: argparse.Namespace, argv: list[str], mode: str) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for recipe in RECIPES:
        print(f"[{mode}] memory: {recipe} in a fresh process", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "mem.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--_worker", f"{recipe}:{mode}:{path}"]
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if proc.returncode != 0 or not path.exists():
                res[recipe] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else
                               f"exit {proc.returncode}"}
                continue
            res[recipe] = json.loads(path.read_text())
    g, b = res["grpo"], res["bridge"]
    if "error" in g or "error" in b:
        return res
    res["state_ratio"] = b["state"]["total_mb"] / g["state"]["total_mb"]
    if "peak_cuda_mb" in g:
        res["measure"] = "torch.cuda.max_memory_allocated after setup (weights included)"
        res["memory_ratio"] = b["peak_cuda_mb"] / g["peak_cuda_mb"]
        above = [x["peak_cuda_mb"] - x["baseline_cuda_mb"] for x in (g, b)]
    else:
        res["measure"] = "peak RSS, resource.getrusage (whole process: libraries, load, steps)"
        res["memory_ratio"] = b["peak_rss_mb"] / g["peak_rss_mb"]
        above = [x["steps_peak_rss_mb"] - x["baseline_rss_mb"] if x["steps_peak_rss_mb"] is not None else None
                 for x in (g, b)]
    res["memory_ratio_above_baseline"] = above[1] / above[0] if above[0] and above[1] is not None else None
    res["above_baseline_mb"] = {"grpo": above[0], "bridge": above[1]}
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    raw = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(raw)
    if args._worker:
        worker(args)
        return {}
    load_start = load_avg()
    t_start = time.perf_counter()
    # Memory first, while this process is small: a child's getrusage peak includes what it inherited.
    mem = {} if args.no_memory else {mode: memory(args, raw, mode) for mode in modes(args)}
    torch = prepare_torch(args)
    states = {r: build(r, args) for r in RECIPES}
    cfg_b = states["bridge"][0]
    report: dict[str, Any] = {
        "device": args.device, "dtype": args.dtype,
        "device_name": (torch.cuda.get_device_name() if args.device == "cuda"
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "model": cfg_b.model.name_or_path, "overrides": args.override,
        "prompts_per_step": cfg_b.rollout.prompts_per_step, "num_generations": cfg_b.rollout.num_generations,
        "max_new_tokens": cfg_b.rollout.max_new_tokens, "sft_batch_size": cfg_b.train.sft_batch_size,
        "lora": {"r": cfg_b.lora.r, "targets": cfg_b.lora.targets}, "bridge_lam": cfg_b.bridge.lam,
        "steps": args.steps, "warmup_steps": args.warmup, "mem_steps": args.mem_steps,
        "weights": "trained (configured lrs)" if args.train_weights else "frozen (lr 1e-30: identical rollouts)",
        "seed": args.seed, "headline_lengths": modes(args)[0],
        "sft_batch": sft_batch_shape(states["bridge"][1]),
        "paper": PAPER,
    }
    results = {mode: time_mode(torch, args, states, mode) for mode in modes(args)}
    del states
    for mode, res in mem.items():
        results[mode]["memory"] = res
    head = results[modes(args)[0]]
    report["time_ratio"] = head["time_ratio"]
    report["memory_ratio"] = head.get("memory", {}).get("memory_ratio")
    report["floor_time_ratio"] = head["floor_time_ratio"]
    report["over_floor"] = head["over_floor"]
    report["phase_medians_s"] = {r: head[r]["phase_medians_s"] for r in RECIPES}
    report["step_medians_s"] = {r: head[r]["step_s"] for r in RECIPES}
    for mode, res in results.items():
        report[mode] = res
    report["load_avg"] = {"start_1_5_15min": load_start,
                          "end_1_5_15min": load_avg()}
    report["wall_s"] = time.perf_counter() - t_start

    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
