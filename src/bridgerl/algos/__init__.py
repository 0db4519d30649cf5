"""Pure tensor math: log-probs, advantages, losses, the BRIDGE gradient combination.

Imports torch only (no transformers, vLLM or accelerate), so it loads in milliseconds and
every kernel is testable on CPU.
"""

from bridgerl.algos.advantages import group_advantages, group_stats, zero_std_group_mask
from bridgerl.algos.bridge import combine_lora_grads, cooperative_gain, joint_loss, lam_at
from bridgerl.algos.importance import IS_MODES, sampler_importance_weights
from bridgerl.algos.logprobs import entropy_from_logits, token_logprobs
from bridgerl.algos.losses import (
    PRESETS,
    aggregate,
    chord_phi_weights,
    expert_token_stats,
    kl_penalty,
    policy_loss,
    sft_loss,
)

__all__ = [
    "IS_MODES",
    "PRESETS",
    "aggregate",
    "chord_phi_weights",
    "combine_lora_grads",
    "cooperative_gain",
    "entropy_from_logits",
    "expert_token_stats",
    "group_advantages",
    "group_stats",
    "joint_loss",
    "kl_penalty",
    "lam_at",
    "policy_loss",
    "sampler_importance_weights",
    "sft_loss",
    "token_logprobs",
    "zero_std_group_mask",
]
