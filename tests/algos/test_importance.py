"""sampler_importance_weights (TRL's truncated importance sampling for vLLM) and its place in
policy_loss: hand-computed weights for every mode, unknown log-probs, masks, metrics."""

import math

import pytest
import torch

from bridgerl.algos import IS_MODES, policy_loss, sampler_importance_weights
from bridgerl.config import CHOICES

NAN = math.nan
LN = math.log
# trainer log pi_old - sampler log q per token: ratios 1.5, 3.0, 0.5 (row 0) and 1.0, 4.0, pad (row 1)
TRAINER = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.3, 5.0]])
SAMPLER = TRAINER - torch.tensor([[LN(1.5), LN(3.0), LN(0.5)], [0.0, LN(4.0), 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


def test_token_truncate_is_min_of_the_ratio_and_the_cap():
    w, m = sampler_importance_weights(TRAINER, SAMPLER, MASK, cap=2.0, mode="token_truncate")
    assert torch.allclose(w, torch.tensor([[1.5, 2.0, 0.5], [1.0, 2.0, 1.0]]), atol=1e-6)  # pad: 1
    assert m["sampling/importance_sampling_ratio/min"].item() == pytest.approx(0.5)
    assert m["sampling/importance_sampling_ratio/max"].item() == pytest.approx(2.0)
    assert m["sampling/importance_sampling_ratio/mean"].item() == pytest.approx((1.5 + 2 + 0.5 + 1 + 2) / 5)
    gaps = [LN(1.5), LN(3.0), LN(2.0), 0.0, LN(4.0)]  # |log ratio| over the 5 masked tokens
    assert m["sampling/sampling_logp_difference/mean"].item() == pytest.approx(sum(gaps) / 5, abs=1e-6)
    assert m["sampling/sampling_logp_difference/max"].item() == pytest.approx(LN(4.0), abs=1e-6)


def test_token_mask_zeroes_ratios_above_the_cap():
    w, _ = sampler_importance_weights(TRAINER, SAMPLER, MASK, cap=2.0, mode="token_mask")
    assert torch.allclose(w, torch.tensor([[1.5, 0.0, 0.5], [1.0, 0.0, 1.0]]), atol=1e-6)


def test_sequence_modes_use_one_ratio_per_row():
    # row 0: 1.5 * 3 * 0.5 = 2.25; row 1: 1 * 4 = 4 (the padded token is ignored)
    w, m = sampler_importance_weights(TRAINER, SAMPLER, MASK, cap=3.0, mode="sequence_truncate")
    assert torch.allclose(w, torch.tensor([[2.25, 2.25, 2.25], [3.0, 3.0, 1.0]]), atol=1e-5)
    assert m["sampling/importance_sampling_ratio/mean"].item() == pytest.approx((2.25 + 3.0) / 2, abs=1e-5)
    w, _ = sampler_importance_weights(TRAINER, SAMPLER, MASK, cap=3.0, mode="sequence_mask")
    assert torch.allclose(w, torch.tensor([[2.25, 2.25, 2.25], [0.0, 0.0, 1.0]]), atol=1e-5)


def test_unknown_sampler_logprobs_count_as_matched_and_stay_out_of_the_metrics():
    sampler = SAMPLER.clone()
    sampler[0, 1] = NAN  # the ratio-3 token: vLLM gave no log-prob for it
    w, m = sampler_importance_weights(TRAINER, sampler, MASK, cap=2.0, mode="token_truncate")
    assert w[0].tolist() == pytest.approx([1.5, 1.0, 0.5])
    assert m["sampling/sampling_logp_difference/mean"].item() == pytest.approx(
        (LN(1.5) + LN(2.0) + 0 + LN(4.0)) / 4, abs=1e-6)
    w, _ = sampler_importance_weights(TRAINER, sampler, MASK, cap=3.0, mode="sequence_truncate")
    assert w[0].tolist() == pytest.approx([0.75] * 3)  # 1.5 * 0.5


def test_weights_are_constants_and_a_perfect_sampler_gives_one():
    trainer = TRAINER.clone().requires_grad_(True)
    w, m = sampler_importance_weights(trainer, TRAINER.clone(), MASK)
    assert not w.requires_grad and torch.equal(w, torch.ones(2, 3))
    assert m["sampling/sampling_logp_difference/max"].item() == 0.0


def test_empty_mask_and_bad_mode():
    w, m = sampler_importance_weights(TRAINER, SAMPLER, torch.zeros(2, 3, dtype=torch.bool))
    assert torch.equal(w, torch.ones(2, 3)) and m["sampling/importance_sampling_ratio/mean"].item() == 1.0
    with pytest.raises(ValueError, match="token_truncate"):
        sampler_importance_weights(TRAINER, SAMPLER, MASK, mode="token")
    assert CHOICES["rollout.vllm_importance_sampling_mode"] == IS_MODES  # the config offers exactly these


def test_policy_loss_weights_the_surrogate_but_not_kl_or_entropy():
    logp = torch.tensor([[LN(1.5), LN(0.5), LN(1.1)]])  # ratios against old = 0
    old = torch.zeros(1, 3)
    weights = torch.tensor([[2.0, 0.5, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    ref = torch.full((1, 3), -0.1)
    entropy = torch.tensor([[0.3, 0.2, 0.1]])
    kw = dict(ref_logp=ref, kl_coef=0.1, entropy=entropy, entropy_coef=0.01)
    loss, m = policy_loss(logp, old, torch.tensor([1.0]), mask, token_weights=weights, **kw)
    # A = +1: surrogate min(r, clip(r)) = (1.2, 0.5, 1.1), times the weights (2, 0.5, 1)
    kl = m["kl"].item() * 3
    expected = (-(1.2 * 2 + 0.5 * 0.5 + 1.1) + 0.1 * kl - 0.01 * (0.3 + 0.2 + 0.1)) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    plain, _ = policy_loss(logp, old, torch.tensor([1.0]), mask, **kw)
    assert plain.item() == pytest.approx((-(1.2 + 0.5 + 1.1) + 0.1 * kl - 0.01 * 0.6) / 3, abs=1e-6)


def test_weighted_policy_gradient_is_the_weight_times_the_plain_one():
    logp = torch.tensor([[LN(0.9), LN(1.1)]], requires_grad=True)
    loss, _ = policy_loss(logp, torch.zeros(1, 2), torch.tensor([2.0]), torch.ones(1, 2),
                          token_weights=torch.tensor([[1.7, 0.4]]))
    loss.backward()
    # d/dlogp of -w r A / 2 = -w r A / 2 (both ratios inside the clip range)
    assert torch.allclose(logp.grad, torch.tensor([[-1.7 * 0.9 * 2 / 2, -0.4 * 1.1 * 2 / 2]]), atol=1e-6)
