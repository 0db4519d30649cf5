"""The sampler / trainer mismatch: a truncated importance weight on each token's policy loss.

An engine with its own kernels (vLLM: other attention, fused ops, bf16 accumulation) samples
from a distribution q that differs slightly from the trainer's pi_old, although both hold the
same weights. The policy-gradient estimate assumes the rollouts came from pi_old, so each
token's loss is weighted by rho = pi_old(y_t) / q(y_t), truncated at a cap C to bound its
variance: Truncated Importance Sampling (Yao et al., "Your Efficient RL Framework Secretly
Brings You Off-Policy RL Training", 2025), as TRL's GRPOTrainer applies it for vLLM
(`vllm_importance_sampling_correction`, `vllm_importance_sampling_mode`,
`vllm_importance_sampling_cap`). The mode names are TRL's:

    token_truncate     rho_t = min(exp(log pi_old - log q), C) per token
    token_mask         rho_t, set to 0 where it exceeds C
    sequence_truncate  one rho per row, exp(sum_t (log pi_old - log q)), truncated at C
    sequence_mask      the row's rho, 0 where it exceeds C

Tokens whose sampler log-prob is unknown (NaN: the engine did not report it) count as matched
(rho = 1 for that token, left out of the metrics). Imports torch only.
"""

from __future__ import annotations

import torch
from torch import Tensor

IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def sampler_importance_weights(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, *, cap: float = 2.0,
                               mode: str = "token_truncate") -> tuple[Tensor, dict[str, Tensor]]:
    """Importance weights [B, T] correcting for sampling by another engine, and their metrics.

    trainer_logp: [B, T] log pi_old(y_t) of the sampled tokens under the trainer (detached here)
    sampler_logp: [B, T] log q(y_t) as the sampling engine reported it; NaN where unknown
    mask:         [B, T] completion tokens that count
    Returns (weights, metrics). weights: [B, T], >= 0, detached, 1 outside the mask (so they
    can multiply a per-token loss directly). metrics (detached scalars, TRL's names):
      sampling/sampling_logp_difference/mean, .../max: |log pi_old - log q| over known tokens
      sampling/importance_sampling_ratio/min, /mean, /max: the weights after truncation or
      masking, over known tokens (token modes) or rows (sequence modes)
    """
    if mode not in IS_MODES:
        raise ValueError(f"unknown importance sampling mode {mode!r}; valid: {', '.join(IS_MODES)}")
    mask = mask.bool()
    trainer_logp = trainer_logp.detach().float()
    sampler_logp = sampler_logp.to(trainer_logp.device).float()
    known = mask & ~torch.isnan(sampler_logp)  # [B, T]
    diff = torch.where(known, trainer_logp - sampler_logp, torch.zeros_like(trainer_logp))  # log rho_t, 0 if unknown
    sequence = mode.startswith("sequence")
    log_rho = diff.sum(-1, keepdim=True) if sequence else diff  # [B, 1] or [B, T]
    rho = torch.exp(log_rho.clamp(max=80.0))  # an overflowing exp would only be truncated or masked anyway
    if mode.endswith("truncate"):
        rho = rho.clamp(max=cap)
    else:
        rho = torch.where(rho > cap, torch.zeros_like(rho), rho)
    weights = torch.where(mask, rho.expand_as(diff), torch.ones_like(diff))

    with torch.no_grad():
        gap = diff.abs()[known]
        seen = rho.squeeze(-1)[known.any(-1)] if sequence else rho[known]  # rows with a known token / known tokens
        metrics = {
            "sampling/sampling_logp_difference/mean": _stat(gap, torch.mean),
            "sampling/sampling_logp_difference/max": _stat(gap, torch.max),
            "sampling/importance_sampling_ratio/min": _stat(seen, torch.min, empty=1.0),
            "sampling/importance_sampling_ratio/mean": _stat(seen, torch.mean, empty=1.0),
            "sampling/importance_sampling_ratio/max": _stat(seen, torch.max, empty=1.0),
        }
    return weights, metrics


def _stat(values: Tensor, fn, empty: float = 0.0) -> Tensor:
    return fn(values) if values.numel() else torch.tensor(empty)
