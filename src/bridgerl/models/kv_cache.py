"""What generation (rollout/hf.py) and the RL passes (trainers/batch.py) both need to run a prompt
once and continue from its KV cache: position ids under left padding, and the cache in a model's
output under the name this transformers version gives it."""

from __future__ import annotations

from typing import Any

import torch


def left_padded_positions(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] position ids for [B, T] attention masks with left padding: each row counts its real
    tokens from 0, as generate does (leading pads get 0; a pad after real tokens repeats the last
    position, which no real token attends to)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def output_cache(out: Any) -> tuple[str, Any]:
    """(keyword, cache) of a forward's output: "cache" in transformers >= 5.x, else
    "past_key_values"; the same keyword passes the cache back into forward or generate."""
    key = "cache" if "cache" in out else "past_key_values"
    return key, out.get(key)
