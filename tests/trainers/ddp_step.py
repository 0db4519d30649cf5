"""One BRIDGE (or other recipe) step on fixed rollouts, run by test_distributed.py both as one
process and under `accelerate launch --num_processes 2 --cpu`; rank 0 saves the updated weights."""

from __future__ import annotations

import sys

import torch
from safetensors.torch import save_file

from bridgerl.trainers.recipes import STEPS
from bridgerl.trainers.state import build_state
from bridgerl.utils.distributed import init_distributed

from conftest import FixedEngine, ListTask, exact_config, tiny_llama
from bridgerl.models.tiny import build_tokenizer


def main(out: str, recipe: str) -> None:
    dist = init_distributed()
    tok = build_tokenizer()
    model = tiny_llama(tok, seed=0)
    st = build_state(exact_config(f"recipe={recipe}"), ListTask(), model, tok, FixedEngine(tok), dist)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a mid-training state, identical on every rank
        for p in st.lora.values():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for p in (st.shadow or {}).values():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    STEPS[recipe](st)
    if dist.main:
        tensors = {f"theta.{n}": p.detach().clone() for n, p in st.theta.items()}
        tensors.update({f"lora.{n}": p.detach().clone() for n, p in st.lora.items()})
        tensors.update({f"shadow.{n}": p.detach().clone() for n, p in (st.shadow or {}).items()})
        save_file(tensors, out)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
