"""Atomic training checkpoints for exact resume.

A checkpoint is a folder `checkpoints/step-<N>/` holding the model (theta and w, safetensors),
the shadow thetahat (safetensors), `trainer_state.pt` (optimizer and scheduler states, data
positions, the step) and one `rng-<rank>.pt` per process (each rank samples its own rollouts).
A sharded run (train.sharding=fsdp) writes one `shard-<rank>.pt` per process instead of the
safetensors and optimizer states: that rank's slices of every weight and optimizer moment;
it resumes on the same number of processes. The folder is written under a temporary name and
renamed into place, so a process killed while writing leaves only a `.tmp-*` folder, which
resume ignores and removes: the last *complete* checkpoint is always the one resumed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bridgerl.config import ConfigError
from bridgerl.utils.seed import rng_state, set_rng_state
from bridgerl.utils.sharding import load_local_optimizer_state, local_optimizer_state, local_tensor

PREFIX = "step-"


def _tensors(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied embeddings)
    return {n: p.detach().cpu().clone().contiguous() for n, p in params.items()}


def _weights(st: Any) -> dict[str, torch.Tensor]:
    """Every trained tensor under one name: "model.<name>" (theta and w), "shadow.<name>"."""
    out = {f"model.{n}": p for n, p in st.model.named_parameters()}
    out.update({f"shadow.{n}": p for n, p in (st.shadow or {}).items()})
    return out


def save_checkpoint(st: Any, run_dir: Path, *, keep_last: int, extra: dict[str, Any] | None = None) -> Path:
    """Write step-<st.step> atomically. Every rank calls it: each saves its RNG state (and its
    shards when sharded); rank 0 writes the rest and publishes the folder."""
    dist, rank = st.dist, st.dist.rank
    root = run_dir / "checkpoints"
    final = root / f"{PREFIX}{st.step}"
    tmp = root / f".tmp-{PREFIX}{st.step}"
    if dist.main:
        root.mkdir(exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    if st.sharded:
        shard = {"weights": {n: local_tensor(p).detach().cpu().clone() for n, p in _weights(st).items()},
                 "optimizers": {k: local_optimizer_state(o) for k, o in st.optimizers.items()}}
        torch.save(shard, tmp / f"shard-{rank}.pt")
    elif dist.main:
        save_file(_tensors(dict(st.model.named_parameters())), str(tmp / "model.safetensors"))
        if st.shadow is not None:
            save_file(_tensors(st.shadow), str(tmp / "shadow.safetensors"))
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    if dist.main:
        state = {
            "step": st.step,
            "world": dist.world,
            "sharded": st.sharded,
            "optimizers": {} if st.sharded else {k: o.state_dict() for k, o in st.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in st.schedulers.items()},
            "samplers": {k: s.state_dict() for k, s in (("rl", st.rl_sampler), ("sft", st.sft_sampler)) if s},
        }
        torch.save(state, tmp / "trainer_state.pt")
        (tmp / "extra.json").write_text(json.dumps(extra or {}))
    dist.barrier()
    if dist.main:
        for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    if root.is_dir():
        for partial in root.glob(".tmp-*"):  # a write that was killed half-way
            shutil.rmtree(partial, ignore_errors=True)
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(st: Any, path: Path) -> dict[str, Any]:
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    sharded, world = state.get("sharded", False), state.get("world", 1)
    if sharded != st.sharded or (sharded and world != st.dist.world):
        saved = f"sharded over {world} processes" if sharded else "unsharded"
        now = f"sharded over {st.dist.world} processes" if st.sharded else "unsharded"
        raise ConfigError(f"checkpoint {path} was written {saved} but this run is {now}; resume with the "
                         "same train.sharding and number of processes")
    if sharded:
        shard = torch.load(path / f"shard-{st.dist.rank}.pt", weights_only=False)
        weights = shard["weights"]
    else:
        weights = {f"model.{n}": t for n, t in load_file(str(path / "model.safetensors")).items()}
        if st.shadow is not None:
            weights.update({f"shadow.{n}": t for n, t in load_file(str(path / "shadow.safetensors")).items()})
    params = _weights(st)
    missing = set(params) - set(weights)
    if missing:
        raise ConfigError(f"checkpoint {path} does not match this model (missing {sorted(missing)[:3]}...); resume "
                          "with the model and recipe it was trained with")
    with torch.no_grad():
        for n, p in params.items():
            local_tensor(p).copy_(weights[n])
    for k, o in st.optimizers.items():
        if sharded:
            load_local_optimizer_state(o, shard["optimizers"][k])
        else:
            o.load_state_dict(state["optimizers"][k])
    for k, s in st.schedulers.items():
        s.load_state_dict(state["schedulers"][k])
    for k, sampler in (("rl", st.rl_sampler), ("sft", st.sft_sampler)):
        if sampler is not None:
            sampler.load_state_dict(state["samplers"][k])
    rng = path / f"rng-{st.dist.rank}.pt"
    set_rng_state(torch.load(rng if rng.exists() else path / "rng-0.pt", weights_only=False))
    st.step = state["step"]
    return json.loads((path / "extra.json").read_text())
