"""The lean shadow (bridge.lean_shadow, issue #13): thetahat's AdamW moments in a file, and theta's and
thetahat's weights in file mappings that are resident only while they are used.

The paper names the full shadow copy thetahat as BRIDGE's cost at scale. Of what thetahat adds, its
AdamW moments (exp_avg, exp_avg_sq) are the largest part: two more copies of the weights, in memory
for the whole run though they are read once per step. `FileAdamW` keeps them in an unnamed temporary
file (deleted when the process ends) and maps one parameter's pair into memory for its update only,
so at most one parameter's moments are resident at a time; the operating system's page cache (which
it may evict to disk) holds the rest. The arithmetic is torch's own AdamW, called on one parameter at
a time, so the update is the same bit for bit as `torch.optim.AdamW` on the CPU (single-tensor path;
tests/trainers/test_lean_shadow.py). Cost: each step reads and writes the moments once.

`FileBacked` moves a set of weights into one shared mapping of an unnamed temporary file: the tensors
keep their identity (parameters, optimizer references, views in a model), only their storage moves.
`page_out()` drops the mapping from this process's resident memory (madvise MADV_DONTNEED: in a shared
file mapping the data stay in the file and the page cache), and the next read or write faults the pages
back. A BRIDGE step with its own shadow rollouts uses the two copies one after the other (thetahat
samples, passes and steps; then theta's pass 1 and step), so each copy is paged out while the other
trains and one copy of the weights is resident at the peak, as in GRPO. The numbers are untouched.

A file in an in-memory /tmp (tmpfs) saves nothing: set TMPDIR to a folder on disk there.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.optim.optimizer import _get_scalar_dtype

MOMENTS = ("exp_avg", "exp_avg_sq")


def _aligned(nbytes: int) -> int:
    """nbytes rounded up to the mapping granularity (every slot starts where a mapping may)."""
    g = mmap.ALLOCATIONGRANULARITY
    return max(g, -(-nbytes // g) * g)


class FileAdamW(torch.optim.AdamW):
    """AdamW (torch's, single-tensor) whose exp_avg / exp_avg_sq live in a temporary file.

    state[p] holds only "step" between updates; state_dict() and load_state_dict() read and write the
    moments in torch.optim.AdamW's own format, so checkpoints move freely between the two optimizers.
    """

    def __init__(self, params: Any, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, directory: str | None = None) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self._file = tempfile.TemporaryFile(dir=directory)  # unnamed: gone when the process ends
        self._slots: dict[torch.Tensor, tuple[int, int]] = {}  # parameter -> (offset, slot bytes)
        end = 0
        for group in self.param_groups:
            for p in group["params"]:
                size = _aligned(p.numel() * p.element_size())
                self._slots[p] = (end, size)
                end += 2 * size
        self._file.truncate(end)  # a sparse file of zeros: AdamW's initial moments

    @contextmanager
    def _moments(self, p: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """p's (exp_avg, exp_avg_sq), mapped from the file for the duration of the block (CPU tensors)."""
        offset, size = self._slots[p]
        mm = mmap.mmap(self._file.fileno(), 2 * size, offset=offset)
        try:
            pair = tuple(torch.frombuffer(mm, dtype=p.dtype, count=p.numel(), offset=i * size).view(p.shape)
                         for i in range(2))
            yield pair
            del pair  # the tensors export the mapping's buffer: drop them before closing it
        finally:
            mm.close()

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        groups = [g["params"] for g in self.param_groups]
        try:
            for gi, params in enumerate(groups):
                for p in params:
                    if p.grad is not None:
                        for gj, g in enumerate(self.param_groups):  # torch's AdamW sees this parameter alone
                            g["params"] = [p] if gj == gi else []
                        self._step_one(p)
        finally:
            for g, params in zip(self.param_groups, groups):
                g["params"] = params
        return loss

    def _step_one(self, p: torch.Tensor) -> None:
        with self._moments(p) as (m, v):
            state = self.state[p]
            on_cpu = p.device.type == "cpu"
            state["exp_avg"], state["exp_avg_sq"] = (m, v) if on_cpu else (m.to(p.device), v.to(p.device))
            if "step" not in state:  # the counter AdamW itself would make
                state["step"] = torch.tensor(0.0, dtype=_get_scalar_dtype())
            try:
                super().step()
                if not on_cpu:  # an accelerator: the pair visited the device for the update
                    m.copy_(state["exp_avg"])
                    v.copy_(state["exp_avg_sq"])
            finally:
                for k in MOMENTS:
                    del state[k]

    def state_dict(self) -> dict[str, Any]:
        """torch.optim.AdamW's state dict (the moments read from the file into memory)."""
        try:
            for p, state in self.state.items():
                with self._moments(p) as (m, v):
                    state["exp_avg"], state["exp_avg_sq"] = m.clone(), v.clone()
            out = super().state_dict()
            out["state"] = {i: dict(s) for i, s in out["state"].items()}  # its own dicts: ours lose the moments below
        finally:
            for state in self.state.values():
                for k in MOMENTS:
                    state.pop(k, None)
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for p, state in self.state.items():
            with self._moments(p) as (m, v):
                for dst, k in ((m, "exp_avg"), (v, "exp_avg_sq")):
                    if k in state:
                        dst.copy_(state.pop(k).to(dst.dtype).cpu())
                    else:
                        dst.zero_()

    def __del__(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


class FileBacked:
    """CPU tensors whose storage is one shared mapping of an unnamed temporary file (see the module
    docstring); `page_out()` takes them out of resident memory until they are next touched."""

    def __init__(self, tensors: list[torch.Tensor], directory: str | None = None) -> None:
        slots, end = [], 0
        for t in tensors:
            if t.device.type != "cpu":
                raise ValueError(f"FileBacked holds CPU tensors; got one on {t.device}")
            slots.append(end)
            end += _aligned(t.numel() * t.element_size())
        self._file = tempfile.TemporaryFile(dir=directory)  # unnamed: gone when the process ends
        self._file.truncate(max(end, 1))
        self._mm = mmap.mmap(self._file.fileno(), max(end, 1))  # MAP_SHARED: writes reach the file
        with torch.no_grad():
            for t, offset in zip(tensors, slots):
                view = torch.frombuffer(self._mm, dtype=t.dtype, count=t.numel(), offset=offset).view(t.shape)
                view.copy_(t)
                t.data = view  # the same tensor object (parameter, optimizer entry), its storage in the file

    def page_out(self) -> None:
        """Drop the pages from this process's memory; the data stay in the file (page cache)."""
        self._mm.madvise(mmap.MADV_DONTNEED)


def file_directory() -> str | None:
    """Where FileAdamW puts its file: $TMPDIR (or the system's temporary folder)."""
    return os.environ.get("TMPDIR") or None
