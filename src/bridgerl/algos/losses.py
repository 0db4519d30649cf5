"""Loss kernels: aggregation, KL estimators, the policy-gradient loss, the SFT loss.

All losses are to be *minimised* (L = -J). Masks are binary [B, T] (bool or 0/1); masked-out
positions are ignored even if their values are inf or NaN (padding may produce either).
"""

from __future__ import annotations

import torch
from torch import Tensor

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
KL_ESTIMATORS = ("k1", "k3")


LOW_PROB = 0.01  # an expert token the model gives less than this is "out of reach" in the metrics


def _masked(values: Tensor, mask: Tensor) -> Tensor:
    """values with masked-out entries set to an exact 0 (where, not *: inf/NaN cannot leak)."""
    return torch.where(mask.bool(), values, torch.zeros_like(values))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the masked entries; 0 on an empty mask. Detached: used for metrics."""
    values, mask = values.detach().float(), mask.bool()
    return _masked(values, mask).sum() / mask.sum().clamp(min=1)


def aggregate(
    values: Tensor,
    mask: Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Reduce per-token values [B, T] under mask [B, T] to a scalar.

    mode "token_mean":              sum(values * mask) / num_tokens  (default: mask.sum())
         "seq_mean_token_mean":     sum_b [ sum_t values*mask / len_b ] / num_seqs   (default B)
         "seq_mean_token_sum_norm": sum_b [ sum_t values*mask / max_len ] / num_seqs (Dr.GRPO;
                                    default max_len: T). A constant normaliser removes the
                                    length bias of the per-sequence mean.
    Passing num_tokens / num_seqs counted over the whole optimizer batch (all accumulation
    micro-batches, all data-parallel ranks) makes the micro-batch results *sum* to the
    full-batch value, so accumulation and DDP's gradient averaging (times world size) are exact.
    Denominators are clamped to >= 1: an empty mask gives 0, never NaN.
    """
    mask = mask.bool()
    summed = _masked(values, mask)
    if mode == "token_mean":
        # Kept as a tensor (no .item()) so a GPU step does not synchronise here.
        if num_tokens is None:
            denom = mask.sum()
        else:
            denom = torch.as_tensor(num_tokens, device=mask.device)
        return summed.sum() / denom.clamp(min=1)
    seqs = values.shape[0] if num_seqs is None else num_seqs
    seqs = max(float(seqs), 1.0)
    if mode == "seq_mean_token_mean":
        per_seq = summed.sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
        return per_seq.sum() / seqs
    if mode == "seq_mean_token_sum_norm":
        length = values.shape[-1] if max_len is None else max_len
        per_seq = summed.sum(-1) / max(float(length), 1.0)  # [B]
        return per_seq.sum() / seqs
    raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (the KL term of Eq. 1).

    logp, ref_logp: [B, T]; returns [B, T].
    "k1": log pi - log pi_ref (unbiased, high variance, can be negative per token).
    "k3": r - log r - 1 with r = pi_ref / pi (Schulman's estimator, verl "low_var_kl"):
          unbiased and >= 0. The log ratio is clamped to [-20, 20] so one very unlikely
          token cannot overflow exp().
    """
    if estimator == "k1":
        return logp - ref_logp
    if estimator == "k3":
        log_ratio = (ref_logp - logp).clamp(-20.0, 20.0)
        return torch.exp(log_ratio) - log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    aggregation: str = "token_mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    off_policy: Tensor | None = None,
    shaped_gamma: float = 0.1,
    token_weights: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO/GRPO clipped surrogate (the L_RL of BRIDGE Eqs. 7-9), one kernel for every variant.

    logp:       [B, T] log-probs of the sampled tokens under the policy being trained.
    old_logp:   [B, T] log-probs under the policy that sampled them (detached by the caller;
                for the BRIDGE shadow this is pi(theta, w), method.md decision 4).
    advantages: [B] one advantage per sequence, broadcast over its tokens.
    mask:       [B, T] completion tokens that count.
    off_policy: [B] bool, rows that are expert traces (LUFFY). On those rows the token
                objective is f(p) * A with f(p) = p / (p + shaped_gamma), p = exp(logp):
                no clipping and no old_logp (the expert's own probability is taken as 1).
                The shaping keeps gradients alive on low-probability expert tokens.
    ref_logp / kl_coef / kl_estimator: add kl_coef * kl_penalty on every masked token.
    entropy / entropy_coef: subtract entropy_coef * entropy [B, T] per token (an exploration bonus),
                before aggregation, so it is normalised exactly like the surrogate (expert rows
                included). A bonus needs `entropy` with its graph (entropy_from_logits on the
                logits that gave logp): a detached one would change the loss value, not the gradient.
    token_weights: [B, T] constants >= 0 multiplying the clipped surrogate of on-policy rows
                (not the KL or entropy terms), e.g. algos.importance's sampler correction.
    Returns (loss, metrics). Metrics are detached scalars, token means over the local mask:
    clip_ratio/low_mean, clip_ratio/high_mean, clip_ratio/region_mean (over on-policy tokens),
    kl (if ref_logp is given), entropy (if given).
    """
    lo = clip_eps_low
    hi = clip_eps_low if clip_eps_high is None else clip_eps_high
    mask = mask.bool()
    adv = advantages.detach().to(logp.dtype).unsqueeze(-1)  # [B, 1]
    if off_policy is None:
        off = torch.zeros(logp.shape[0], dtype=torch.bool, device=logp.device)
    else:
        off = off_policy.bool().to(logp.device)
    off_tok = off.unsqueeze(-1).expand_as(logp)  # [B, T]

    # Expert rows have no meaningful old_logp: zero their log ratio so garbage there cannot
    # produce inf/NaN that would leak through the where() below into the gradient.
    log_ratio = torch.where(off_tok, torch.zeros_like(logp), logp - old_logp.detach())
    ratio = torch.exp(log_ratio)
    surrogate = torch.min(ratio * adv, ratio.clamp(1.0 - lo, 1.0 + hi) * adv)
    if token_weights is not None:
        surrogate = surrogate * token_weights.detach()
    objective = surrogate
    if off_policy is not None:
        p = torch.exp(logp)
        shaped = p / (p + shaped_gamma) * adv  # LUFFY's shaped importance ratio
        objective = torch.where(off_tok, shaped, surrogate)
    per_token = -objective

    metrics: dict[str, Tensor] = {}
    if ref_logp is not None:
        kl = kl_penalty(logp, ref_logp.detach(), kl_estimator)
        if kl_coef != 0.0:
            per_token = per_token + kl_coef * kl
        metrics["kl"] = _masked_mean(kl, mask)
    if entropy is not None:
        if entropy_coef != 0.0:
            if logp.requires_grad and not entropy.requires_grad:
                raise ValueError("entropy_coef != 0 needs the entropy with its graph (computed from the "
                                 "logits that gave logp); a detached entropy leaves the gradient unchanged")
            per_token = per_token - entropy_coef * entropy
        metrics["entropy"] = _masked_mean(entropy, mask)

    loss = aggregate(
        per_token, mask, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )

    # A token is "clipped" when the clip actually bounds it: the min picked the clipped side.
    with torch.no_grad():
        on_mask = mask & ~off_tok
        low = (adv < 0) & (ratio < 1.0 - lo)
        high = (adv > 0) & (ratio > 1.0 + hi)
        metrics["clip_ratio/low_mean"] = _masked_mean(low.float(), on_mask)
        metrics["clip_ratio/high_mean"] = _masked_mean(high.float(), on_mask)
        metrics["clip_ratio/region_mean"] = _masked_mean((low | high).float(), on_mask)
        if off_policy is not None:  # how reachable the expert tokens are: f'(p) vanishes as p -> 0
            for k, v in expert_token_stats(logp, mask & off_tok).items():
                metrics[f"off_policy/{k}"] = v
    return loss, metrics


def sft_loss(
    logp: Tensor,
    mask: Tensor,
    *,
    token_weights: Tensor | None = None,
    aggregation: str = "token_mean",
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> Tensor:
    """Negative log-likelihood of demonstration tokens (L_SFT = -J_SFT, Eq. 3).

    logp: [B, T] log-probs of the expert tokens; mask: [B, T];
    token_weights: optional [B, T] per-token weights (e.g. chord_phi_weights), treated as constants.
    Token mean by default; an empty mask gives 0 (LUFFY's NaN-on-empty-micro-batch bug avoided).
    """
    nll = -logp
    if token_weights is not None:
        nll = nll * token_weights.detach()
    return aggregate(
        nll, mask, aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len
    )


def expert_token_stats(logp: Tensor, mask: Tensor, weights: Tensor | None = None) -> dict[str, Tensor]:
    """Detached means over demonstration tokens: the model's probability p of each expert token,
    the share with p < LOW_PROB, and (if given) the mean per-token weight, e.g. CHORD's phi.

    logp, mask, weights: [B, T]. p-dependent weights (p(1-p), LUFFY's p/(p+gamma)) vanish on
    tokens the model cannot yet produce; these numbers show when that is what stalls a run.
    """
    mask = mask.bool()
    p = logp.detach().exp()
    stats = {"prob_mean": _masked_mean(p, mask), "low_prob_frac": _masked_mean((p < LOW_PROB).float(), mask)}
    if weights is not None:
        stats["weight_mean"] = _masked_mean(weights.detach(), mask)
    return stats


def chord_phi_weights(logp: Tensor) -> Tensor:
    """CHORD-phi per-token weight phi = p (1 - p), p = exp(logp) (arXiv 2508.11408).

    logp: [B, T]; returns [B, T], detached. Peaks at p = 0.5: tokens the model already
    knows (p ~ 1) or finds near-impossible (p ~ 0) barely move it, which limits the
    disruption of SFT on the RL policy.
    """
    p = logp.detach().exp()
    return p * (1.0 - p)


# The TRL loss types as values. Keys map to: `aggregation`, `clip_eps_low`, `clip_eps_high`
# (policy_loss); `advantage_scale` (group_advantages' `scale`); `global_norm` (True: pass
# num_tokens / num_seqs counted over the whole optimizer batch, across accumulation steps and
# ranks; False: each micro-batch normalises by its own counts); `drop_zero_std_groups` (drop
# rows where zero_std_group_mask is False before the update).
PRESETS: dict[str, dict] = {
    # GRPO as verl runs it (the BRIDGE paper's framework; method.md decision 1): token mean over
    # the batch. DeepSeekMath's / TRL's per-sequence mean is `aggregation="seq_mean_token_mean"`;
    # on the testbed it drove wrong answers ever longer (its length bias, Dr.GRPO section 3).
    "grpo": dict(aggregation="token_mean", advantage_scale="group", clip_eps_low=0.2,
                 clip_eps_high=0.2, global_norm=True, drop_zero_std_groups=False),
    # Dr.GRPO (arXiv 2503.20783): a constant length normaliser and no std division remove
    # the length and question-difficulty biases of GRPO.
    "dr_grpo": dict(aggregation="seq_mean_token_sum_norm", advantage_scale="none", clip_eps_low=0.2,
                    clip_eps_high=0.2, global_norm=True, drop_zero_std_groups=False),
    # BNPO / TRL "bnpo": every token of the local batch weighs the same.
    "bnpo": dict(aggregation="token_mean", advantage_scale="group", clip_eps_low=0.2,
                 clip_eps_high=0.2, global_norm=False, drop_zero_std_groups=False),
    # DAPO (arXiv 2503.14476): token mean over the global batch so long answers are not
    # down-weighted; a higher upper clip keeps low-probability tokens exploring; zero-variance
    # groups carry no signal and are dropped (dynamic sampling).
    "dapo": dict(aggregation="token_mean", advantage_scale="group", clip_eps_low=0.2,
                 clip_eps_high=0.28, global_norm=True, drop_zero_std_groups=True),
}
