"""Rows of a math data file: local JSONL / JSON / Parquet, or a hub dataset id.

`read_rows(path, split=...)` gives (label, unit, rows): a short label for example ids, the unit
a row number is counted in ("line" for JSON lines, "row index" otherwise) and (number, dict)
pairs; every problem with the file itself is one TaskError line naming the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bridgerl.tasks.base import TaskError

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[\w.-]+)?(?::[\w.-]+)?(?:@[\w.:%+\[\]-]+)?$")
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def read_rows(path: str, *, split: str, limit: int | None = None) -> tuple[str, str, list[tuple[int, dict]]]:
    """(label, unit, rows) from a local file or hub id; unit is "line" (JSONL) or "row index"."""
    local = Path(path).expanduser()
    if local.is_file():
        suffix = local.suffix.lower()
        label = f"{local.parent.name}/{local.stem}" if local.parent.name else local.stem
        if suffix in (".jsonl", ".json"):
            return label, "line", _read_json(local, limit)
        if suffix == ".parquet":
            return label, "row index", _read_parquet(local, limit)
        raise TaskError(f"math data file {str(local)!r} has an unsupported type {suffix!r}; use .jsonl, .json or .parquet")
    if local.is_dir():
        raise TaskError(f"math data path {str(local)!r} is a directory; point at a .jsonl/.json/.parquet file in it")
    if local.suffix.lower() in _LOCAL_SUFFIXES or path.startswith(("/", ".", "~")) or not _HUB_ID_RE.match(path):
        raise TaskError(
            f"math data file {path!r} not found; pass an existing .jsonl/.json/.parquet file"
            " or a hub id owner/name[:config][@split]"
        )
    return path, "row index", _read_hub(path, split, limit)


def _read_json(path: Path, limit: int | None) -> list[tuple[int, dict]]:
    rows: list[tuple[int, dict]] = []
    with path.open(encoding="utf-8") as fh:
        head = fh.read(4096).lstrip()
        fh.seek(0)
        if path.suffix.lower() == ".json" and head.startswith("["):  # one JSON array
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the file") from None
            items = list(enumerate(data))[:limit] if limit is not None else list(enumerate(data))
            for i, row in items:
                if not isinstance(row, dict):
                    kind = type(row).__name__
                    raise TaskError(f"{path} row index {i}: expected a JSON object, got {kind}; make each item an object")
                rows.append((i, row))
            return rows
        for lineno, line in enumerate(fh, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TaskError(f"{path} line {lineno}: not valid JSON ({exc.msg}); fix or delete that line") from None
            if not isinstance(row, dict):
                kind = type(row).__name__
                raise TaskError(f"{path} line {lineno}: expected a JSON object, got {kind}; write one object per line")
            rows.append((lineno, row))
    return rows


def _read_parquet(path: Path, limit: int | None) -> list[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError(f"reading {path} needs pyarrow; pip install pyarrow (or convert the file to JSONL)") from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise TaskError(f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); check the file") from None
    if limit is not None:
        table = table.slice(0, limit)
    return list(enumerate(table.to_pylist()))


def _read_hub(spec: str, default_split: str, limit: int | None) -> list[tuple[int, dict]]:
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise TaskError(f"loading hub dataset {spec!r} needs `datasets`; pip install datasets, or pass a local file") from None
    try:
        ds = datasets.load_dataset(name, config or None, split=split or default_split)
    except Exception as exc:  # network, missing split or config, ...: all mean "cannot load this id"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TaskError(
            f"could not load hub dataset {name!r} (config {config or None!r}, split {split or default_split!r}): "
            f"{type(exc).__name__}: {first}; check the id, or download it and pass a local JSONL/Parquet file"
        ) from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [(i, dict(row)) for i, row in enumerate(ds)]
