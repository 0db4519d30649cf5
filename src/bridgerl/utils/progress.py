"""The training progress display: rich's live bar where it can draw, printed lines where it cannot.

rich draws its live bar in a terminal, and in Jupyter only through ipywidgets; in a notebook
without ipywidgets it warns and shows nothing until the end. There, `LineProgress` prints one
plain line every ~5% of the run instead (stdout, which every notebook shows as it comes).
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn


def progress_display(columns: list[ProgressColumn], console: Console, *, label: str, disable: bool) -> Any:
    """A context manager with rich.Progress's add_task / update: rich's bar, or LineProgress (see module doc)."""
    if not disable and console.is_jupyter and importlib.util.find_spec("ipywidgets") is None:
        return LineProgress(label)
    return Progress(*columns, console=console, disable=disable)


class LineProgress:
    """The part of rich.Progress the training loop uses, as printed lines ("grpo  3/10  4s  reward=0.500")."""

    def __init__(self, label: str, lines: int = 20) -> None:
        self.label, self.lines = label, lines
        self.total, self.completed, self.fields = 0, 0, {}
        self.started = time.perf_counter()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        self.total, self.completed, self.fields = int(total or 0), int(completed), dict(fields)
        return 0

    def update(self, task_id: int, *, advance: float = 0, **fields: Any) -> None:
        self.completed += int(advance)
        self.fields.update(fields)
        every = max(1, self.total // self.lines)
        if advance and (self.completed % every == 0 or self.completed >= self.total):
            info = self.fields.get("info", "")
            print(f"{self.label}  {self.completed}/{self.total}  {time.perf_counter() - self.started:.0f}s  {info}".rstrip(),
                  flush=True)
