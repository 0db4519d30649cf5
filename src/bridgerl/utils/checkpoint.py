"""Atomic training checkpoints for exact resume.

A checkpoint is a folder `checkpoints/step-<N>/` holding the model (theta and w, safetensors),
the shadow thetahat (safetensors), and `trainer_state.pt` (optimizer and scheduler states, RNG
states, data positions, the step). It is written under a temporary name and renamed into
place, so a process killed while writing leaves only a `.tmp-*` folder, which resume ignores
and removes: the last *complete* checkpoint is always the one resumed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bridgerl.utils.seed import rng_state, set_rng_state

PREFIX = "step-"


def _tensors(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage (tied embeddings)
    return {n: p.detach().cpu().clone().contiguous() for n, p in params.items()}


def save_checkpoint(st: Any, run_dir: Path, *, keep_last: int, extra: dict[str, Any] | None = None) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / f"{PREFIX}{st.step}"
    tmp = root / f".tmp-{PREFIX}{st.step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file(_tensors(dict(st.model.named_parameters())), str(tmp / "model.safetensors"))
    if st.shadow is not None:
        save_file(_tensors(st.shadow), str(tmp / "shadow.safetensors"))
    state = {
        "step": st.step,
        "optimizers": {k: o.state_dict() for k, o in st.optimizers.items()},
        "schedulers": {k: s.state_dict() for k, s in st.schedulers.items()},
        "samplers": {k: s.state_dict() for k, s in (("rl", st.rl_sampler), ("sft", st.sft_sampler)) if s},
        "rng": rng_state(),
    }
    torch.save(state, tmp / "trainer_state.pt")
    (tmp / "extra.json").write_text(json.dumps(extra or {}))
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in complete_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
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
    weights = load_file(str(path / "model.safetensors"))
    params = dict(st.model.named_parameters())
    missing = set(params) - set(weights)
    if missing:
        raise ValueError(f"checkpoint {path} does not match this model (missing {sorted(missing)[:3]}...)")
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(weights[n])
        if st.shadow is not None:
            for n, t in load_file(str(path / "shadow.safetensors")).items():
                st.shadow[n].copy_(t)
    state = torch.load(path / "trainer_state.pt", weights_only=False)
    for k, o in st.optimizers.items():
        o.load_state_dict(state["optimizers"][k])
    for k, s in st.schedulers.items():
        s.load_state_dict(state["schedulers"][k])
    for k, sampler in (("rl", st.rl_sampler), ("sft", st.sft_sampler)):
        if sampler is not None:
            sampler.load_state_dict(state["samplers"][k])
    set_rng_state(state["rng"])
    st.step = state["step"]
    return json.loads((path / "extra.json").read_text())
