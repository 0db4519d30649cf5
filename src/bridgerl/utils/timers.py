"""Named, timed phases: every step reports `time/<phase>` (seconds) for each phase it ran."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.totals[phase] += time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        """The phase times accumulated since the last pop, as `time/<phase>` metrics."""
        out = {f"time/{k}": v for k, v in self.totals.items()}
        self.totals.clear()
        return out


def _sync() -> None:
    # CUDA kernels are asynchronous: without a sync a phase would be charged to the next one.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
