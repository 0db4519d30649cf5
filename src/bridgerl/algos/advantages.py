"""Group-relative advantages (GRPO) and the group statistics TRL users know.

Layout: rewards are one flat vector [N*G]; prompt i owns the consecutive rows i*G .. i*G+G-1,
which is how `generate(prompts, n=G)` returns them.

The standard deviation is the *unbiased* one (divides by G-1), as `torch.std` in TRL and verl,
so that advantages match those frameworks number for number. A group of one has no spread:
its std is taken as 0 (torch would give NaN), and its advantage is 0 anyway (r - mean = 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

SCALES = ("group", "batch", "none")


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """rewards: [N*G] -> [N, G] float32."""
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"rewards must be a flat vector whose length is a multiple of group_size={group_size}, "
            f"got shape {tuple(rewards.shape)}"
        )
    return rewards.float().view(-1, group_size)


def _std(x: Tensor, dim: int | None = None) -> Tensor:
    """Unbiased std; 0 (not NaN) when only one value is present."""
    n = x.numel() if dim is None else x.shape[dim]
    if n < 2:
        return torch.zeros(()) if dim is None else x.new_zeros(x.shape[:dim] + x.shape[dim + 1 :])
    return x.std() if dim is None else x.std(dim=dim)


def _group_has_variance(grouped: Tensor) -> Tensor:
    """grouped: [N, G] -> [N] bool. isclose (as TRL's frac_reward_zero_std): float noise is 0."""
    std = _std(grouped, dim=1)
    return ~torch.isclose(std, torch.zeros_like(std))


def group_advantages(
    rewards: Tensor, group_size: int, scale: str = "group", eps: float = 1e-4
) -> Tensor:
    """A_i = r_i - mean(group of i), optionally divided by a std.

    rewards: [N*G]; returns [N*G] float32 (detached: advantages are constants of the loss).
    scale: "group" -> / (std of the group + eps)        (GRPO, DeepSeekMath; BRIDGE decision 1)
           "batch" -> / (std of the whole batch + eps)  (REINFORCE++-style global scaling)
           "none"  -> not divided                       (Dr.GRPO: the std division biases
                                                         towards too-easy/too-hard prompts; LUFFY)
    A group whose rewards are all equal gets advantage 0 under every scale.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; valid: {', '.join(SCALES)}")
    grouped = _grouped(rewards.detach(), group_size)  # [N, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (_std(grouped, dim=1).unsqueeze(1) + eps)
    elif scale == "batch":
        centred = centred / (_std(grouped.reshape(-1)) + eps)
    return centred.reshape(-1)


def zero_std_group_mask(rewards: Tensor, group_size: int) -> Tensor:
    """Rows whose group has some reward variance (True = keep).

    rewards: [N*G]; returns [N*G] bool. DAPO's dynamic sampling drops the other rows: an
    all-correct or all-wrong group has zero advantage everywhere and only dilutes the batch.
    """
    keep = _group_has_variance(_grouped(rewards.detach(), group_size))  # [N]
    return keep.repeat_interleave(group_size)


def group_stats(rewards: Tensor, group_size: int) -> dict[str, float]:
    """TRL's reward metrics, as python floats.

    rewards: [N*G]. `reward`: mean reward; `reward_std`: mean over groups of the group's
    (unbiased) std; `frac_reward_zero_std`: fraction of groups whose rewards are all equal.
    """
    grouped = _grouped(rewards.detach(), group_size)  # [N, G]
    if grouped.shape[0] == 0:
        return {"reward": 0.0, "reward_std": 0.0, "frac_reward_zero_std": 0.0}
    return {
        "reward": grouped.mean().item(),
        "reward_std": _std(grouped, dim=1).mean().item(),
        "frac_reward_zero_std": (~_group_has_variance(grouped)).float().mean().item(),
    }
