"""The BRIDGE update as pure functions (method.md section 4; arXiv 2509.06948).

Loss form of one iteration (L = -J):
    pass 1: L1 = (1 - lam) L_SFT(theta, w) + lam L_RL(theta, w)  -> theta.grad, g1 (on w)   Eq. 7
    pass 2: L2 = L_RL(thetahat, w) on the same rollouts          -> thetahat.grad, g2 (on w) Eq. 9
    w.grad = g1 - lam * g2                                                                 Eq. 8
The trainer owns the passes and the optimizers; this module owns the arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

SCHEDULES = ("constant", "linear")


def joint_loss(l_sft: Tensor, l_rl: Tensor, lam: float) -> Tensor:
    """(1 - lam) L_SFT + lam L_RL: the loss whose gradient is Eq. 7 (and g1 of Eq. 8)."""
    return (1.0 - lam) * l_sft + lam * l_rl


def combine_lora_grads(
    g1: Sequence[Tensor | None], g2: Sequence[Tensor | None], lam: float, meta: bool = True
) -> list[Tensor | None]:
    """LoRA gradient of Eq. 8 in loss form: g1 - lam * g2, one entry per LoRA parameter.

    g1: grads of pass 1 ((1-lam) L_SFT + lam L_RL at theta); g2: grads of L_RL at thetahat.
    Since g1 already holds (1-lam) grad L_SFT + lam grad L_RL(theta), subtracting lam * g2
    gives (1-lam) grad L_SFT + lam [grad L_RL(theta) - grad L_RL(thetahat)]: descent on minus
    the meta-objective f of Eq. 10, whose bracket is the cooperative gain.
    meta=False returns g1 unchanged: w trained like theta (the paper's "no meta-objective"
    ablation).
    A None entry (parameter untouched by a pass) counts as a zero gradient; None in both stays None.
    Inputs are not modified.
    """
    if len(g1) != len(g2):
        raise ValueError(f"g1 has {len(g1)} gradients but g2 has {len(g2)}")
    if not meta:
        return list(g1)
    out: list[Tensor | None] = []
    for a, b in zip(g1, g2):
        if b is None:
            out.append(a)
        elif a is None:
            out.append(-lam * b)
        else:
            out.append(a - lam * b)
    return out


def cooperative_gain(j_rl_theta: Tensor | float, j_rl_shadow: Tensor | float) -> Tensor | float:
    """J_RL(theta, w) - J_RL(thetahat, w): the bracket of Eq. 10.

    Positive when joint SFT+RL training (theta) does better on the RL objective than RL
    alone (the shadow thetahat) under the same adapter w. Pass objectives (e.g. mean reward),
    not losses; with losses the sign flips.
    """
    return j_rl_theta - j_rl_shadow


def lam_at(
    step: int,
    total_steps: int,
    schedule: str = "constant",
    lam: float = 0.5,
    lam_start: float = 0.0,
) -> float:
    """The penalty weight lam for a step (0-based).

    "constant": lam at every step (the paper: 0.5, robust over 0.3-0.7).
    "linear":   lam_start at step 0 rising linearly to lam at the last step (total_steps - 1),
                lam after it. A growing lam tightens the penalty of Eq. 6 over training
                (the relaxation error is O(1 - lam)); method.md decision 5.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must lie in [0, 1], got {lam}")
    if schedule == "constant":
        return float(lam)
    if schedule == "linear":
        if not 0.0 <= lam_start <= 1.0:
            raise ValueError(f"lam_start must lie in [0, 1], got {lam_start}")
        frac = min(max(step / max(total_steps - 1, 1), 0.0), 1.0)
        return float(lam_start + (lam - lam_start) * frac)
    raise ValueError(f"unknown lam schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
