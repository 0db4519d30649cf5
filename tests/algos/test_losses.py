"""aggregate, kl_penalty, sft_loss, chord_phi_weights, PRESETS (policy_loss: its own file)."""

import math

import pytest
import torch

from bridgerl.algos.advantages import group_advantages
from bridgerl.algos.losses import (
    AGGREGATIONS,
    PRESETS,
    aggregate,
    chord_phi_weights,
    expert_token_stats,
    kl_penalty,
    policy_loss,
    sft_loss,
)

VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)


def _random_batch(seed, b=4, t=6):
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(b, t, generator=g)
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[0] = False  # one empty row, the edge every mode must survive
    return values, mask


def _aggregate_loop(values, mask, mode, max_len=None):
    """Second implementation: plain Python over rows and tokens."""
    b, t = values.shape
    rows = [[values[i, j].item() for j in range(t) if mask[i, j]] for i in range(b)]
    if mode == "token_mean":
        n = sum(len(r) for r in rows)
        return sum(sum(r) for r in rows) / max(n, 1)
    if mode == "seq_mean_token_mean":
        return sum(sum(r) / max(len(r), 1) for r in rows) / b
    return sum(sum(r) / (max_len or t) for r in rows) / b


# ---------------------------------------------------------------- aggregate


def test_aggregate_hand_computed_values():
    assert aggregate(VALUES, MASK, "token_mean").item() == pytest.approx(7 / 3)  # (1+2+4)/3
    assert aggregate(VALUES, MASK, "seq_mean_token_mean").item() == pytest.approx(2.75)  # (1.5+4)/2
    norm = "seq_mean_token_sum_norm"
    assert aggregate(VALUES, MASK, norm).item() == pytest.approx(7 / 6)  # (3/3 + 4/3) / 2
    assert aggregate(VALUES, MASK, norm, max_len=4).item() == pytest.approx(0.875)  # (3/4 + 4/4) / 2


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_aggregate_matches_python_loop(mode):
    values, mask = _random_batch(0)
    expected = _aggregate_loop(values, mask, mode)
    assert aggregate(values, mask, mode).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_two_half_batches_with_full_batch_counts_sum_to_full_batch_value_and_grad(mode):
    values, mask = _random_batch(1, b=6)
    x = values.clone().requires_grad_(True)
    full = aggregate(x, mask, mode)
    (g_full,) = torch.autograd.grad(full, x)
    counts = dict(num_tokens=mask.sum(), num_seqs=6, max_len=6)
    x2 = values.clone().requires_grad_(True)
    halves = aggregate(x2[:3], mask[:3], mode, **counts)
    halves = halves + aggregate(x2[3:], mask[3:], mode, **counts)
    (g_halves,) = torch.autograd.grad(halves, x2)
    assert halves.item() == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(g_halves, g_full, atol=1e-7)


def test_token_mean_of_two_half_batches_without_global_count_is_not_full_batch():
    # Guards the test above: the local normaliser really differs, so the global count matters.
    values, mask = VALUES, MASK
    local = aggregate(values[:1], mask[:1], "token_mean")
    local = local + aggregate(values[1:], mask[1:], "token_mean")
    assert local.item() != pytest.approx(aggregate(values, mask, "token_mean").item())


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_empty_mask_gives_zero_not_nan(mode):
    x = torch.randn(2, 3, requires_grad=True)
    out = aggregate(x, torch.zeros(2, 3, dtype=torch.bool), mode)
    out.backward()
    assert out.item() == 0.0
    assert torch.equal(x.grad, torch.zeros(2, 3))
    assert aggregate(x, torch.zeros(2, 3), mode, num_tokens=0, num_seqs=0, max_len=0).item() == 0.0


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_masked_out_nan_and_inf_do_not_leak(mode):
    values = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]], requires_grad=True)
    mask = torch.tensor([[1, 0], [0, 1]], dtype=torch.bool)
    out = aggregate(values, mask, mode)
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(values.grad).all()


def test_unknown_aggregation_raises_naming_valid_modes():
    valid = "token_mean, seq_mean_token_mean, seq_mean_token_sum_norm"
    with pytest.raises(ValueError, match=valid):
        aggregate(VALUES, MASK, "sum")


# ---------------------------------------------------------------- kl_penalty


def test_kl_estimators_hand_computed():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2.0))
    # r = 0.25 / 0.5 = 0.5: k3 = 0.5 - ln 0.5 - 1 = 0.193147
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + math.log(2.0) - 1.0, abs=1e-6)


@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_kl_estimator_expectation_under_policy_is_exact_kl(estimator):
    # E_{x~p}[k] summed exactly over a 5-token vocabulary equals KL(p || q) for k1 and k3.
    p = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25])
    q = torch.tensor([0.3, 0.3, 0.1, 0.2, 0.1])
    kl = (p * (p / q).log()).sum()
    est = (p * kl_penalty(p.log(), q.log(), estimator)).sum()
    assert est.item() == pytest.approx(kl.item(), abs=1e-6)


def test_k3_is_nonnegative_zero_at_equality_and_finite_when_extreme():
    torch.manual_seed(0)
    a, b = torch.randn(50), torch.randn(50)
    assert (kl_penalty(a, b, "k3") >= 0).all()
    assert torch.equal(kl_penalty(a, a, "k3"), torch.zeros(50))
    extreme = kl_penalty(torch.tensor([-200.0]), torch.tensor([0.0]), "k3")
    assert extreme.item() == pytest.approx(math.exp(20.0) - 21.0, rel=1e-5)


def test_unknown_kl_estimator_raises():
    with pytest.raises(ValueError, match="k1, k3"):
        kl_penalty(torch.zeros(1), torch.zeros(1), "k2")


# ---------------------------------------------------------------- sft_loss, chord_phi_weights


def test_sft_loss_is_token_mean_nll_hand_computed():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    assert sft_loss(logp, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    seq_mean = sft_loss(logp, mask, aggregation="seq_mean_token_mean")
    assert seq_mean.item() == pytest.approx(2.25)  # (1.5 + 3) / 2


def test_sft_loss_token_weights_scale_each_token_and_receive_no_gradient():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    w = torch.tensor([[0.5, 2.0]], requires_grad=True)
    loss = sft_loss(logp, torch.ones(1, 2), token_weights=w)
    loss.backward()
    assert loss.item() == pytest.approx((0.5 + 4.0) / 2)
    assert torch.allclose(logp.grad, torch.tensor([[-0.25, -1.0]]))
    assert w.grad is None


def test_sft_loss_empty_mask_gives_zero_not_nan():
    assert sft_loss(torch.randn(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_chord_phi_weights_are_p_times_one_minus_p_and_detached():
    logp = torch.tensor([[math.log(0.5), 0.0, math.log(0.1)]], requires_grad=True)
    w = chord_phi_weights(logp)
    assert torch.allclose(w, torch.tensor([[0.25, 0.0, 0.09]]), atol=1e-6)
    assert not w.requires_grad


def test_expert_token_stats_hand_computed_over_the_mask_only():
    logp = torch.log(torch.tensor([[0.5, 0.001, 0.2], [0.005, 0.9, 0.3]]))
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    stats = expert_token_stats(logp, mask, chord_phi_weights(logp))
    assert stats["prob_mean"].item() == pytest.approx((0.5 + 0.001 + 0.005 + 0.9) / 4)
    assert stats["low_prob_frac"].item() == pytest.approx(0.5)  # 0.001 and 0.005 are below 0.01
    phi = [0.25, 0.001 * 0.999, 0.005 * 0.995, 0.09]
    assert stats["weight_mean"].item() == pytest.approx(sum(phi) / 4)
    assert set(expert_token_stats(logp, mask)) == {"prob_mean", "low_prob_frac"}


def test_policy_loss_reports_expert_token_reachability_only_with_off_policy_rows():
    logp = torch.log(torch.tensor([[0.5, 0.001], [0.2, 0.2]]))
    args = (logp, logp.clone(), torch.tensor([1.0, -1.0]), torch.ones(2, 2))
    _, with_expert = policy_loss(*args, off_policy=torch.tensor([True, False]))
    assert with_expert["off_policy/prob_mean"].item() == pytest.approx((0.5 + 0.001) / 2)
    assert with_expert["off_policy/low_prob_frac"].item() == pytest.approx(0.5)
    _, on_policy = policy_loss(*args)
    assert not any(k.startswith("off_policy/") for k in on_policy)


# ---------------------------------------------------------------- PRESETS


def test_presets_realise_the_trl_loss_types():
    assert PRESETS["grpo"]["aggregation"] == "token_mean"  # verl's GRPO, the paper's framework
    assert PRESETS["grpo"]["advantage_scale"] == "group"
    assert PRESETS["dr_grpo"]["aggregation"] == "seq_mean_token_sum_norm"
    assert PRESETS["dr_grpo"]["advantage_scale"] == "none"
    assert PRESETS["bnpo"]["aggregation"] == "token_mean" and not PRESETS["bnpo"]["global_norm"]
    dapo = PRESETS["dapo"]
    assert dapo["aggregation"] == "token_mean" and dapo["global_norm"]
    assert dapo["clip_eps_high"] == 0.28
    assert dapo["drop_zero_std_groups"] is True


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_runs_through_the_kernels(name):
    p = PRESETS[name]
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2, scale=p["advantage_scale"])
    loss, _ = policy_loss(
        torch.zeros(2, 3), torch.zeros(2, 3), adv, torch.ones(2, 3), aggregation=p["aggregation"],
        clip_eps_low=p["clip_eps_low"], clip_eps_high=p["clip_eps_high"],
    )
    assert torch.isfinite(loss)
