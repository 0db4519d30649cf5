"""Data parallelism: every rank holds the whole model, takes its shard of each batch, and the
gradients are summed across ranks before every optimizer step.

Losses are normalised by counts summed over all ranks (tokens, sequences), so the summed
gradient equals the single-process gradient of the full batch. The gradients are reduced
*after* the BRIDGE combination w.grad = g1 - lam * g2; the combination is linear, so this
equals combining the reduced g1 and g2 (and costs one reduction instead of two).
Launch with `accelerate launch [--cpu] --num_processes N -m bridgerl train ...`; accelerate
sets up the process group (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[T]) -> list[T]:
        return items[self.rank :: self.world]

    def sum(self, value: float) -> float:
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return float(t.item())

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average every numeric metric over ranks (same keys on every rank)."""
        if self.world == 1:
            return metrics
        keys = sorted(k for k, v in metrics.items() if isinstance(v, (int, float)))
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return {**metrics, **{k: float(v) / self.world for k, v in zip(keys, t.tolist())}}

    def reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum .grad over ranks, in one flat bucket (a missing grad counts as zero). Sharded
        parameters are skipped: FSDP has already reduce-scattered their gradients as sums."""
        from torch.distributed.tensor import DTensor

        params = [p for p in params if not isinstance(p, DTensor)]
        if self.world == 1 or not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset : offset + n].view_as(p).clone()
            offset += n

    def broadcast_(self, tensors: list[torch.Tensor]) -> None:
        """Give every rank rank 0's values, in place (as DDP does with a module at construction).

        Ranks are seeded differently (they sample different rollouts), so anything initialised at
        random after seeding, such as the LoRA matrices A, would otherwise differ between ranks.
        """
        if self.world == 1:
            return
        with torch.no_grad():
            for t in tensors:
                buf = t.detach().to(self._comm_device)
                dist.broadcast(buf, src=0)
                if buf.data_ptr() != t.data_ptr():
                    t.copy_(buf)

    def gather(self, obj: Any) -> list[Any]:
        if self.world == 1:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    @property
    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def env_flag(name: str) -> bool:
    """Whether a launcher's boolean environment variable (e.g. accelerate's ACCELERATE_USE_CPU) is set."""
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def init_distributed() -> Dist:
    """One process: a plain Dist. Under a launcher that starts several (WORLD_SIZE > 1):
    accelerate's process state (gloo on CPU, NCCL on GPU)."""
    if env_flag("ACCELERATE_USE_DEEPSPEED"):
        from bridgerl.config import ConfigError

        raise ConfigError("bridgerl does not run under DeepSpeed (a BRIDGE step combines w's gradient between two "
                          "backward passes and steps three optimizers, which DeepSpeed's engine owns); for "
                          "ZeRO-3-style sharding launch with configs/accelerate/fsdp.yaml instead")
    use_cpu = env_flag("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=use_cpu)
        return Dist(rank=state.process_index, world=state.num_processes, device=state.device)
    if use_cpu and "MASTER_ADDR" in os.environ and "ACCELERATE_USE_CPU" in os.environ:
        # `accelerate launch --cpu --num_processes N` starts N processes only through mpirun; without
        # an MPI hostfile it starts one. Say so rather than silently training on one process.
        print("bridgerl: running as 1 process; for N CPU processes use "
              "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N -m bridgerl train ...` "
              "or `torchrun --nproc_per_node N -m bridgerl train ...`", file=sys.stderr)
    return Dist(device=torch.device("cpu" if use_cpu else "cuda"))
