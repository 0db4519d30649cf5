"""Peak resident memory of GRPO, BRIDGE and BRIDGE with the lean shadow, on a real model (issue #13).

    python benchmarks/shadow_memory.py                                   # SmolLM2 on configs/smollm2-additions.yaml
    python benchmarks/shadow_memory.py --steps 3 --override rollout.prompts_per_step=8

Each variant runs in a child process of its own (so that each peak is its own, not the largest so
far), built with `bridgerl.trainers.loop.setup` from the config plus --override, and stepped --steps
times with the trainer's own step functions; nothing is evaluated or written. A sampler thread reads
the process's resident set (/proc/self/statm) every few milliseconds and charges it to the phase the
trainer's timer is in (generate, sft_fwd_bwd, rl_fwd_bwd, shadow_fwd_bwd, optim, ...), so the table says
where each peak happens. `peak_rss_mb` is the kernel's high-water mark (ru_maxrss), which includes
loading the model.

Variants, each candidate saving on its own and then together: grpo; bridge (the defaults: thetahat's
AdamW moments in memory, LoRA trained through merged weights); bridge-lean (bridge.lean_shadow=true:
thetahat's moments in a file, mapped one parameter at a time, and, since 7cd97fc, theta's and thetahat's
weights in file mappings, each paged out while the other copy works); bridge+unmerged_lora (lora.merged=false:
B(A(x)) added to the base layer's output, no merged copy of each weight held until backward);
bridge-lean+unmerged_lora (both); each also as <variant>+trim (train.trim_after_phases=true: glibc's
malloc_trim at the end of every phase) and as <variant>+free (train.return_freed_memory=true: freed
blocks of >= 64 KiB unmapped at once, within phases too). benchmarks/results/shadow_memory.json holds the measured figures.
Written to benchmarks/results/shadow_memory.json. glibc's MALLOC_* settings in the environment (the
children inherit them) are recorded with the figures: they decide how much freed memory stays resident.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VARIANTS = {"grpo": ["recipe=grpo"], "bridge": ["recipe=bridge"],
            "bridge-lean": ["recipe=bridge", "bridge.lean_shadow=true"],
            "bridge+unmerged_lora": ["recipe=bridge", "lora.merged=false"],
            "bridge-lean+unmerged_lora": ["recipe=bridge", "bridge.lean_shadow=true", "lora.merged=false"]}
# the same with glibc's free pages returned at the end of every phase (train.trim_after_phases)
# and with glibc returning freed blocks at once, within phases too (train.return_freed_memory)
BASE = dict(VARIANTS)
VARIANTS |= {f"{k}+trim": [*v, "train.trim_after_phases=true"] for k, v in BASE.items()}
VARIANTS |= {f"{k}+free": [*v, "train.return_freed_memory=true"] for k, v in BASE.items()}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(variant: str, config: str, overrides: list[str], steps: int) -> dict:
    from bridgerl.config_load import load_config
    from bridgerl.trainers.loop import setup
    from bridgerl.trainers.recipes import STEPS
    from bridgerl.utils.memory import peak_rss_mb

    cfg = load_config(config, [*overrides, *VARIANTS[variant], "log.progress=false", "log.tensorboard=false"])
    st, _ = setup(cfg)
    after_setup = rss_mb()
    phase = {"now": "between"}
    peaks: dict[str, float] = {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            now = rss_mb()
            peaks[phase["now"]] = max(peaks.get(phase["now"], 0.0), now)
            time.sleep(0.005)

    timer_call = type(st.timer).__call__

    @contextmanager
    def charged(self, name):  # the trainer's own phases, with the sampler told which one runs
        before, phase["now"] = phase["now"], name
        try:
            with timer_call(self, name):
                yield
        finally:
            phase["now"] = before

    type(st.timer).__call__ = charged
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        STEPS[cfg.recipe](st)
        st.step += 1
        times.append(time.perf_counter() - t)
    done.set()
    thread.join()
    return {"variant": variant, "peak_rss_mb": peak_rss_mb(),
            "rss_after_setup_mb": after_setup, "peak_rss_by_phase_mb": dict(sorted(peaks.items())),
            "step_s": times, "steps": steps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "smollm2-additions.yaml"))
    p.add_argument("--override", action="append", default=[], help="key=value, repeatable")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--out", default=str(HERE / "results" / "shadow_memory.json"))
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.child:
        print(json.dumps(child(ns.child, ns.config, ns.override, ns.steps)))
        return
    results = []
    for v in ns.variants:
        argv = [sys.executable, __file__, "--child", v, "--config", ns.config, "--steps", str(ns.steps),
                *[a for o in ns.override for a in ("--override", o)]]
        out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            sys.exit(f"{v} failed:\n{out.stderr[-2000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{v:12s} peak {r['peak_rss_mb']:7.0f} MB  by phase " +
              ", ".join(f"{k} {x:.0f}" for k, x in r["peak_rss_by_phase_mb"].items()), flush=True)
    by = {r["variant"]: r for r in results}
    summary = {"config": ns.config, "overrides": ns.override, "steps": ns.steps,
               "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}, "runs": results}
    if "grpo" in by:
        summary["ratio_to_grpo"] = {v: by[v]["peak_rss_mb"] / by["grpo"]["peak_rss_mb"] for v in by if v != "grpo"}
        print("peak / grpo's: " + ", ".join(f"{k} {x:.2f}x" for k, x in summary["ratio_to_grpo"].items()))
    Path(ns.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {ns.out}")


if __name__ == "__main__":
    main()
