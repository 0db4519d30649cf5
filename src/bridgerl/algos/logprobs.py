"""Per-token log-probabilities and entropies from logits.

Both functions compute in float32 whatever the logits' dtype (bf16 log-softmax loses ~2-3
digits, enough to bias importance ratios near 1) and loop over the batch rows, so the float32
working copy is one row, [T, V], never the whole [B, T, V] tensor: the vocabulary axis of a
reasoning model (~150k) makes a full float32 copy of the logits the largest tensor of a step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[tokens], without materialising the full log-softmax.

    logits: [B, T, V], already aligned with the tokens they predict (the caller shifts:
            logits[:, t] is the distribution of tokens[:, t]).
    tokens: [B, T] integer ids.
    returns [B, T] float32; gradients flow to `logits`.

    log p(x) = z_x - logsumexp(z): one gather plus one logsumexp per row.
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match tokens {tuple(tokens.shape)}")
    picked = logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1).float()  # [B, T]
    if logits.shape[0] == 0:
        return picked
    lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # [B, T]
    return picked - lse


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy H = -sum_v p_v log p_v of each position's distribution.

    logits: [B, T, V]; returns [B, T] float32, differentiable (usable as an entropy bonus).
    Logits of -inf (vocabulary masking) contribute 0, not NaN: 0 * log 0 is taken as 0.
    """
    if logits.shape[0] == 0:
        return logits.new_zeros(logits.shape[:-1], dtype=torch.float32)
    rows = []
    for row in logits:  # row: [T, V]
        logp = torch.log_softmax(row.float(), dim=-1)
        # p = 0 exactly where logp = -inf; zero the log there so 0 * -inf does not give NaN.
        logp_finite = logp.masked_fill(~torch.isfinite(logp), 0.0)
        rows.append(-(logp.exp() * logp_finite).sum(-1))
    return torch.stack(rows)
