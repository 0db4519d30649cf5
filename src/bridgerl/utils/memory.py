"""Peak memory of this process (resident set on CPU, allocator peak on CUDA)."""

from __future__ import annotations

import functools
import resource
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from bridgerl.utils.sharding import local_tensor


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def reset_peak_memory() -> bool:
    """Start this process's peak memory over from now: the kernel's resident high-water mark (VmHWM,
    Linux: /proc/self/clear_refs) and CUDA's allocator peak. Returns whether the resident peak was
    reset (False where /proc is missing)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    return reset


def proc_status_mb(field: str) -> float | None:
    """A size field of /proc/self/status (VmRSS, VmHWM, RssAnon, ...) in MiB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def vm_hwm_mb() -> float | None:
    """The resident high-water mark since the process started or `reset_peak_memory` last ran (MiB;
    None where /proc is missing). getrusage's peak, unlike this one, cannot be reset."""
    return proc_status_mb("VmHWM")


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


@functools.cache
def _glibc():
    # loaded once: find_library runs ldconfig in a subprocess, and trim_freed_memory runs every phase
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def trim_freed_memory() -> bool:
    """glibc's malloc_trim(0): give the free pages of every heap back to the OS now (what a phase
    freed stays resident otherwise, kept for reuse). False where the C library is not glibc or had
    nothing to return."""
    libc = _glibc()
    return bool(libc is not None and hasattr(libc, "malloc_trim") and libc.malloc_trim(0))


def return_freed_memory(mmap_threshold: int = 65536) -> bool:
    """Tell glibc to give freed memory back to the OS at once: blocks of >= `mmap_threshold` bytes are
    mapped and unmapped on their own (a fixed threshold: glibc otherwise raises it to the largest block
    freed, up to 32 MiB, and serves later tensors from a heap it keeps), and the heap's top is trimmed
    whenever it is free. The same as MALLOC_MMAP_THRESHOLD_=65536 MALLOC_TRIM_THRESHOLD_=0 in the
    environment, for allocations made after the call. False where the C library is not glibc."""
    libc = _glibc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 0))


def peak_cuda_mb() -> float | None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return None


def held_mb(tensors: Iterable[torch.Tensor], optimizers: Iterable[torch.optim.Optimizer]) -> float:
    """MiB of weights (with their gradients) and optimizer states this process holds, counting
    only its shards when sharded: the training state that data parallelism replicates on every
    rank and FSDP divides by the ranks. A tensor listed twice (tied, shared) counts once."""
    def nbytes(t: torch.Tensor) -> int:
        local = local_tensor(t)
        return local.nelement() * local.element_size()

    seen: set[int] = set()
    total = 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += nbytes(t) + (nbytes(t.grad) if t.grad is not None else 0)
    for opt in optimizers:
        for state in opt.state.values():
            total += sum(nbytes(v) for v in state.values() if isinstance(v, torch.Tensor))
    return total / 2**20
