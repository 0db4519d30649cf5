"""policy_loss: the clipped surrogate, expert rows (LUFFY), KL and entropy terms, invariance."""

import math

import pytest
import torch

from bridgerl.algos.advantages import group_advantages
from bridgerl.algos.logprobs import entropy_from_logits, token_logprobs
from bridgerl.algos.losses import AGGREGATIONS, kl_penalty, policy_loss

RATIOS = torch.tensor([[1.5, 0.5, 1.1], [1.5, 0.5, 1.1]])


def test_clipped_surrogate_hand_computed():
    logp = RATIOS.log()
    old = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    # A=+1: min(r, clip(r)) = (1.2, 0.5, 1.1); A=-1: min(-r, -clip(r)) = (-1.5, -0.8, -1.1)
    loss, _ = policy_loss(logp, old, torch.tensor([1.0, -1.0]), mask)
    assert loss.item() == pytest.approx((-(1.2 + 0.5 + 1.1) + (1.5 + 0.8 + 1.1)) / 6, abs=1e-6)


def test_clip_ratio_counts_only_clipped_tokens():
    logp = RATIOS.log()
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    _, m = policy_loss(logp, torch.zeros(2, 3), torch.tensor([1.0, -1.0]), mask)
    # 5 tokens: A>0 & r=1.5 is high-clipped; A<0 & r=0.5 is low-clipped; the rest are inside.
    assert m["clip_ratio/high_mean"].item() == pytest.approx(1 / 5)
    assert m["clip_ratio/low_mean"].item() == pytest.approx(1 / 5)
    assert m["clip_ratio/region_mean"].item() == pytest.approx(2 / 5)


def test_clipped_tokens_get_zero_gradient_and_others_the_policy_gradient():
    logp = RATIOS[:1].log().clone().requires_grad_(True)
    loss, _ = policy_loss(logp, torch.zeros(1, 3), torch.tensor([2.0]), torch.ones(1, 3))
    loss.backward()
    # d/dlogp of -(r A)/3 = -r A / 3 for unclipped tokens; the 1.5 token sits above 1.2: 0
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.5 * 2 / 3, -1.1 * 2 / 3]]), atol=1e-6)


def test_decoupled_upper_clip_lets_ratio_between_the_two_bounds_learn():
    logp = torch.tensor([[math.log(1.25)]], requires_grad=True)
    for hi, expect_zero in [(None, True), (0.28, False)]:
        loss, _ = policy_loss(
            logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1), clip_eps_high=hi
        )
        (g,) = torch.autograd.grad(loss, logp)
        assert (g.abs().item() == 0.0) == expect_zero


def _policy_loss_loop(logp, old, adv, mask, lo, hi, kl_coef, ref, ent_coef, ent, off, gamma):
    """Second implementation, token by token, token-mean aggregation."""
    total, n = 0.0, 0
    for i in range(logp.shape[0]):
        for j in range(logp.shape[1]):
            if not mask[i, j]:
                continue
            a = adv[i].item()
            if off[i]:
                p = math.exp(logp[i, j].item())
                obj = p / (p + gamma) * a
            else:
                r = math.exp(logp[i, j].item() - old[i, j].item())
                obj = min(r * a, min(max(r, 1 - lo), 1 + hi) * a)
            lr = ref[i, j].item() - logp[i, j].item()
            total += -obj + kl_coef * (math.exp(lr) - lr - 1) - ent_coef * ent[i, j].item()
            n += 1
    return total / max(n, 1)


def test_policy_loss_matches_token_loop_with_kl_entropy_and_expert_rows():
    g = torch.Generator().manual_seed(3)
    b, t = 5, 7
    logp = -torch.rand(b, t, generator=g) * 3
    old = logp + torch.randn(b, t, generator=g) * 0.3
    ref = logp + torch.randn(b, t, generator=g) * 0.3
    ent = torch.rand(b, t, generator=g)
    adv = torch.randn(b, generator=g)
    mask = torch.rand(b, t, generator=g) < 0.8
    off = torch.tensor([False, True, False, False, True])
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.28, ref_logp=ref, kl_coef=0.05, entropy=ent,
              entropy_coef=0.01, off_policy=off, shaped_gamma=0.1)
    loss, m = policy_loss(logp, old, adv, mask, **kw)
    expected = _policy_loss_loop(logp, old, adv, mask, 0.2, 0.28, 0.05, ref, 0.01, ent, off, 0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert m["kl"].item() == pytest.approx(kl_penalty(logp, ref)[mask].mean().item(), abs=1e-6)
    assert m["entropy"].item() == pytest.approx(ent[mask].mean().item(), abs=1e-6)


def test_shaped_ratio_gradient_on_expert_tokens_is_gamma_p_over_p_plus_gamma_squared_times_a():
    gamma = 0.1
    logp = torch.tensor([[math.log(0.05), math.log(0.5), math.log(0.9)]], requires_grad=True)
    # old_logp on expert rows is meaningless; garbage there must not matter
    old = torch.tensor([[float("nan"), float("inf"), -float("inf")]])
    adv = torch.tensor([1.5])
    loss, m = policy_loss(
        logp, old, adv, torch.ones(1, 3), off_policy=torch.tensor([True]), shaped_gamma=gamma
    )
    loss.backward()
    p = logp.detach().exp()
    # objective f(p) A, f = p / (p + gamma): df/dlogp = gamma p / (p + gamma)^2; loss = -mean
    expected = -(gamma * p / (p + gamma) ** 2) * 1.5 / 3
    assert torch.allclose(logp.grad, expected, atol=1e-6)
    assert loss.item() == pytest.approx(-(p / (p + gamma)).mean().item() * 1.5, abs=1e-6)
    assert m["clip_ratio/region_mean"].item() == 0.0  # expert tokens are never counted as clipped


def test_expert_rows_are_not_clipped_even_far_from_old_logp():
    logp = torch.tensor([[0.0]], requires_grad=True)  # p = 1, old says p = e^-5
    loss, _ = policy_loss(logp, torch.tensor([[-5.0]]), torch.tensor([1.0]), torch.ones(1, 1),
                          off_policy=torch.tensor([True]))
    (g,) = torch.autograd.grad(loss, logp)
    assert g.item() == pytest.approx(-0.1 / 1.1**2)  # a PPO clip would have given 0


def test_kl_and_entropy_coefficients_shift_the_loss_by_their_means():
    logp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    ent = torch.tensor([[0.3, 0.7]])
    base, _ = policy_loss(logp, logp, torch.tensor([1.0]), torch.ones(1, 2))
    a, mask = torch.tensor([1.0]), torch.ones(1, 2)
    kl_only, m = policy_loss(logp, logp, a, mask, ref_logp=ref, kl_coef=0.1)
    ent_only, _ = policy_loss(logp, logp, a, mask, entropy=ent, entropy_coef=0.2)
    assert base.item() == pytest.approx(-1.0)  # ratio 1: -A
    assert (kl_only - base).item() == pytest.approx(0.1 * m["kl"].item(), abs=1e-6)
    assert (ent_only - base).item() == pytest.approx(-0.2 * 0.5, abs=1e-6)


# Hand-built logits [2, 3, 5]: two rows, three positions, five tokens; the last token of row 2 is padding.
LOGITS = torch.tensor([
    [[2.0, 0.5, -1.0, 0.0, 1.0], [0.1, 0.2, 0.3, -0.4, 0.0], [-2.0, 1.0, 0.5, 0.5, 3.0]],
    [[0.0, 0.0, 1.0, 2.0, -1.0], [1.5, -0.5, 0.8, 0.0, 0.2], [9.0, -9.0, 0.0, 0.0, 0.0]],
], dtype=torch.float64)
TOKENS = torch.tensor([[0, 1, 4], [3, 2, 0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)


def _reference_loss(logits, old, adv, mode, coef, max_len, eps=0.2):
    """Clipped surrogate minus coef * entropy, each mode's normalisation written out (torch.distributions)."""
    dist = torch.distributions.Categorical(logits=logits)
    ratio = torch.exp(dist.log_prob(TOKENS) - old)
    a = adv.unsqueeze(-1)
    per = -torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a) - coef * dist.entropy()
    per = torch.where(MASK, per, torch.zeros_like(per))
    if mode == "token_mean":
        return per.sum() / MASK.sum()
    if mode == "seq_mean_token_mean":
        return (per.sum(-1) / MASK.sum(-1)).mean()
    return (per.sum(-1) / max_len).mean()


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_entropy_bonus_gradient_matches_autograd_reference(mode):
    """-coef * H is a differentiable bonus, normalised like the surrogate, whatever the aggregation."""
    adv = torch.tensor([1.5, -0.5], dtype=torch.float64)
    old = token_logprobs(LOGITS, TOKENS).detach() + torch.tensor([[0.1, -0.3, 0.0], [0.25, 0.05, 0.0]])
    grads = {}
    for coef in (0.0, 0.7):
        x = LOGITS.clone().requires_grad_(True)
        loss, m = policy_loss(token_logprobs(x, TOKENS), old, adv, MASK, aggregation=mode, max_len=4,
                              entropy=entropy_from_logits(x), entropy_coef=coef)
        (grads[coef],) = torch.autograd.grad(loss, x)
        y = LOGITS.clone().requires_grad_(True)
        ref = _reference_loss(y, old, adv, mode, coef, max_len=4)
        (g_ref,) = torch.autograd.grad(ref, y)
        assert loss.item() == pytest.approx(ref.item(), abs=1e-6)  # bridgerl's kernels run in float32
        torch.testing.assert_close(grads[coef], g_ref, atol=1e-6, rtol=0)
    assert (grads[0.7] - grads[0.0]).abs().max() > 0.01  # the bonus really moves the gradient


def test_entropy_bonus_on_a_detached_entropy_is_refused():
    x = LOGITS[:, :2].clone().requires_grad_(True)
    logp = token_logprobs(x, TOKENS[:, :2])
    with pytest.raises(ValueError, match="entropy_coef"):
        policy_loss(logp, logp.detach(), torch.ones(2), MASK[:, :2], entropy=entropy_from_logits(x).detach(),
                    entropy_coef=0.1)


def test_policy_loss_empty_mask_gives_zero_loss_and_zero_metrics():
    logp = torch.randn(2, 3, requires_grad=True)
    loss, m = policy_loss(
        logp, logp.detach(), torch.ones(2), torch.zeros(2, 3), ref_logp=torch.zeros(2, 3),
        entropy=torch.ones(2, 3), off_policy=torch.tensor([True, False]),
    )
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logp.grad).all()
    assert all(v.item() == 0.0 for v in m.values())


@pytest.mark.parametrize("mode", AGGREGATIONS)
def test_policy_loss_half_batches_with_full_counts_sum_to_full_batch(mode):
    g = torch.Generator().manual_seed(4)
    logp = -torch.rand(4, 5, generator=g)
    old = logp + 0.2 * torch.randn(4, 5, generator=g)
    adv = group_advantages(torch.tensor([1.0, 0, 1, 1]), 2)
    mask = torch.rand(4, 5, generator=g) < 0.7
    x = logp.clone().requires_grad_(True)
    full, _ = policy_loss(x, old, adv, mask, aggregation=mode)
    (g_full,) = torch.autograd.grad(full, x)
    kw = dict(aggregation=mode, num_tokens=mask.sum(), num_seqs=4, max_len=5)
    y = logp.clone().requires_grad_(True)
    halves = policy_loss(y[:2], old[:2], adv[:2], mask[:2], **kw)[0]
    halves = halves + policy_loss(y[2:], old[2:], adv[2:], mask[2:], **kw)[0]
    (g_halves,) = torch.autograd.grad(halves, y)
    assert halves.item() == pytest.approx(full.item(), abs=1e-6)
    assert torch.allclose(g_halves, g_full, atol=1e-7)
