"""What every benchmark script does with its figures: note the machine load, write one JSON file."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def load_avg() -> tuple[float, float, float] | None:
    """The 1/5/15-minute load averages (None where the OS has none): a noisy machine shows here."""
    return os.getloadavg() if hasattr(os, "getloadavg") else None


def write_report(report: dict[str, Any], out: str | Path) -> None:
    """Write the report as indented JSON to `out` (parents created), print it, and say where it went."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    out.write_text(text + "\n")
    print(text)
    print(f"wrote {out}", file=sys.stderr)
