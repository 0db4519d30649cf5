"""One BRIDGE (or other recipe) step on fixed rollouts, run by test_distributed.py both as one
process and under `accelerate launch --num_processes 2` on the CPU, replicated or (with
ACCELERATE_USE_FSDP=true, as an FSDP accelerate config sets it) sharded; rank 0 saves the
updated weights, gathered whole."""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file
from torch.distributed.tensor import distribute_tensor

from bridgerl.trainers.recipes import STEPS
from bridgerl.trainers.state import build_state
from bridgerl.utils.distributed import init_distributed
from bridgerl.utils.seed import seed_everything
from bridgerl.utils.sharding import full_tensors, local_tensor

from conftest import FixedEngine, ListTask, exact_config, tiny_llama
from bridgerl.models.tiny import build_tokenizer


def main(out: str, recipe: str, *overrides: str) -> None:
    dist = init_distributed()
    tok = build_tokenizer()
    model = tiny_llama(tok, seed=0)
    cfg = exact_config(f"recipe={recipe}", *overrides)
    seed_everything(cfg.run.seed + dist.rank)  # as the trainer seeds: ranks sample different rollouts
    st = build_state(cfg, ListTask(), model, tok, FixedEngine(tok), dist)
    assert st.sharded == (dist.world > 1 and os.environ.get("ACCELERATE_USE_FSDP") == "true")
    # Ranks are seeded differently, yet start from one model: w's random A matrices included.
    per_rank = dist.gather([p.detach().clone() for p in st.lora.values()])
    assert all(torch.equal(a, b) for other in per_rank for a, b in zip(per_rank[0], other))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a mid-training state, identical on every rank
        for p in st.lora.values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for n, p in (st.shadow or {}).items():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05
            if st.sharded:  # this rank's rows of the same noise
                p.add_(distribute_tensor(noise, p.device_mesh, p.placements))
            else:
                p.add_(noise)
    STEPS[recipe](st)
    tensors = {f"theta.{n}": t for n, t in full_tensors(st.theta).items()}
    tensors.update({f"lora.{n}": t for n, t in full_tensors(st.lora).items()})
    tensors.update({f"shadow.{n}": t for n, t in full_tensors(st.shadow or {}).items()})
    # What this rank stores of theta and thetahat: all of it unless sharded.
    held = [local_tensor(p).numel() for p in [*st.theta.values(), *(st.shadow or {}).values()]]
    tensors["meta.stored_fraction"] = torch.tensor(sum(held) / sum(t.numel() for k, t in tensors.items()
                                                                  if not k.startswith("lora.")))
    if dist.main:
        save_file({k: v.clone() for k, v in tensors.items()}, out)
    dist.barrier()


if __name__ == "__main__":
    main(*sys.argv[1:])
