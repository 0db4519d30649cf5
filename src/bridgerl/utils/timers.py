"""Named, timed phases: every step reports `time/<phase>` (seconds) for each phase it ran."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


class PhaseTimer:
    """after: called at the end of every phase, outside its time (train.trim_after_phases)."""

    def __init__(self, after: Callable[[], object] | None = None) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.after = after

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.totals[phase] += time.perf_counter() - start
            if self.after is not None:
                self.after()

    def pop(self) -> dict[str, float]:
        """The phase times accumulated since the last pop, as `time/<phase>` metrics."""
        out = {f"time/{k}": v for k, v in self.totals.items()}
        self.totals.clear()
        return out


def _sync() -> None:
    # CUDA kernels are asynchronous: without a sync a phase would be charged to the next one.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
