"""Run folders: what a start may do with an existing `<run.output_dir>/<run.name>/`.

Nothing is deleted implicitly. An existing folder is replaced only with run.overwrite=true;
resume=true continues it only if its saved config.yaml agrees with the new config on every key
that changes training (the keys below may differ). Everything here only reads files, so
a refusal leaves the folder as it was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bridgerl.config import Config, ConfigError
from bridgerl.config_load import to_dict

INTERRUPTED = "interrupted"  # summary.json status of a run stopped by SIGINT / SIGTERM (resumable)

# Keys that may differ on resume: names and places, logging, evaluation, when to checkpoint or stop.
# Evaluation is greedy between steps (it draws no random numbers), so it cannot change training.
NEUTRAL_KEYS = ("run.name", "run.output_dir", "run.overwrite", "resume", "log.", "eval.", "train.log_every",
                "train.save_every", "train.keep_last", "train.checkpoint_minutes", "train.max_minutes",
                "train.micro_batch_size", "train.micro_batch_tokens", "train.return_freed_memory",
                "rollout.hf_share_prefill", "train.share_prompts",
                "train.trim_after_phases")


def run_dir_for(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / cfg.run.name


def finished(run_dir: Path) -> bool:
    """A run that ended (summary.json written) and was not interrupted."""
    path = Path(run_dir) / "summary.json"
    return path.is_file() and _status(path) != INTERRUPTED


def _status(summary: Path) -> str | None:
    try:
        return json.loads(summary.read_text()).get("status")
    except (OSError, ValueError):
        return None


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(saved: dict[str, Any], cfg: Config, ignore: tuple[str, ...]) -> list[str]:
    """'key: old -> new' for every key (present in both) that differs, except the ignored ones: a key
    named in `ignore`, or under a prefix of it that ends with '.'."""
    a, b = _flat(saved), _flat(to_dict(cfg))
    return [f"{k}: {a[k]!r} -> {b[k]!r}" for k in sorted(a.keys() & b.keys()) if a[k] != b[k] and not _among(k, ignore)]


def training_changes(saved: dict[str, Any], cfg: Config) -> list[str]:
    """'key: old -> new' for every key (present in both) that differs and changes training."""
    return config_changes(saved, cfg, NEUTRAL_KEYS)


def _among(key: str, names: tuple[str, ...]) -> bool:
    return any(key == n or (n.endswith(".") and key.startswith(n)) for n in names)


@dataclass
class Start:
    """What train() does with the run folder: "new", "overwrite" (delete, then new), "resume"
    (from `checkpoint`), or "restart" (resume=true on a matching run that has no checkpoint yet)."""
    action: str
    run_dir: Path
    checkpoint: Path | None = None
    made_output_dir: bool = False  # prepare_run_dir created run.output_dir itself (removed again on a failed start)
    prepared: bool = False  # set by train() once the folder is created or loaded (an old run is never touched before)


def plan_start(cfg: Config) -> Start:
    """Decide, reading files only (but for removing a checkpoint torn by a kill); a refusal is a
    ConfigError of one line."""
    from bridgerl.utils.checkpoint import latest_checkpoint

    path = run_dir_for(cfg)
    if not path.exists():
        return Start("new", path)
    if not path.is_dir():
        raise ConfigError(f"run directory {str(path)!r} is a file; pick another run.name or run.output_dir")
    if not any(path.iterdir()):  # an empty folder holds nothing to lose or resume
        return Start("new", path)
    if not cfg.resume:
        if cfg.run.overwrite:
            return Start("overwrite", path)
        what = "a finished run" if finished(path) else "an unfinished run; continue it with resume=true"
        raise ConfigError(f"run directory {str(path)!r} exists ({what}); pick another run.name, or delete it with "
                          "run.overwrite=true")
    config = path / "config.yaml"
    if not config.is_file():
        raise ConfigError(f"resume=true: {str(path)!r} holds no config.yaml, so it is not a bridgerl run; "
                          "pick another run.name")
    if finished(path):
        raise ConfigError(f"resume=true: the run in {str(path)!r} already finished (summary.json); nothing to "
                          "resume; pick another run.name, or delete it with run.overwrite=true resume=false")
    if diff := training_changes(yaml.safe_load(config.read_text()) or {}, cfg):
        raise ConfigError(f"resume=true: {str(path)!r} was trained with other settings ({'; '.join(diff)}); resume "
                          "with its settings (its config.yaml), or start anew with another run.name")
    ckpt = latest_checkpoint(path)
    return Start("resume", path, ckpt) if ckpt is not None else Start("restart", path)
