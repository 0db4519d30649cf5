"""Ctrl-C and SIGTERM during training: stop between steps, never mid-write.

The first SIGINT / SIGTERM only sets a flag; the loop sees it after the step in progress (every
rank agrees on the same step), checkpoints that step, writes summary.json with status
"interrupted" and raises RunInterrupted, which the CLI turns into one line with the exact resume
command and exit code 128 + signal (130 / 143). A second signal abandons the step at once
(KeyboardInterrupt); the run then resumes from its last checkpoint.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(Exception):
    """Training stopped on a signal; what was saved and where."""

    def __init__(self, signum: int, run_dir: Path, step: int, total: int, checkpoint: Path | None,
                 *, abandoned: bool = False, written: bool = True) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.run_dir, self.step, self.total = signum, run_dir, step, total
        self.checkpoint, self.abandoned, self.written = checkpoint, abandoned, written

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self, resume_hint: str) -> str:
        """One line: what happened, what is saved, and `resume_hint` (how to continue)."""
        sig = signal.Signals(self.signum).name
        if not self.written:
            return f"interrupted by {sig} before training started; nothing was written"
        if self.abandoned:
            saved = (f"its last checkpoint is step {self.step} of {self.total}" if self.checkpoint is not None
                     else "it has no checkpoint yet and restarts from step 0")
            return f"aborted by a second {sig} mid-step; {self.run_dir}: {saved}; {resume_hint}"
        return (f"interrupted by {sig} after step {self.step} of {self.total}; checkpoint saved in {self.checkpoint}; "
                f"{resume_hint}")


class StopRequest:
    """Within the block, SIGINT / SIGTERM set `signum` (first) or raise KeyboardInterrupt (second).

    Handlers can only be installed in the main thread; elsewhere the block changes nothing.
    `on_signal` (optional) runs on the first signal, e.g. to say so in a progress bar.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.on_signal: Callable[[], None] | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: abandon the step in progress
        self.signum = signum
        if self.on_signal is not None:
            self.on_signal()

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
