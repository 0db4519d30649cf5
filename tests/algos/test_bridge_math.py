"""The BRIDGE gradient arithmetic (Eqs. 7, 8, 10) and the lam schedule."""

import pytest
import torch

from bridgerl.algos.bridge import combine_lora_grads, cooperative_gain, joint_loss, lam_at


def test_combine_lora_grads_hand_computed():
    g1 = [torch.tensor([1.0, 2.0]), torch.tensor(3.0)]
    g2 = [torch.tensor([4.0, 4.0]), torch.tensor(-2.0)]
    out = combine_lora_grads(g1, g2, 0.5)
    assert torch.equal(out[0], torch.tensor([-1.0, 0.0])) and out[1].item() == 4.0


def test_combine_without_meta_objective_returns_g1():
    g1, g2 = [torch.tensor([1.0, 2.0])], [torch.tensor([4.0, 4.0])]
    assert torch.equal(combine_lora_grads(g1, g2, 0.5, meta=False)[0], g1[0])


def test_combine_treats_none_as_zero_and_keeps_double_none():
    a, b = torch.tensor([2.0]), torch.tensor([6.0])
    out = combine_lora_grads([a, None, None], [None, b, None], 0.5)
    assert torch.equal(out[0], a) and torch.equal(out[1], torch.tensor([-3.0])) and out[2] is None


def test_combine_does_not_modify_its_inputs():
    g1, g2 = [torch.tensor([1.0])], [torch.tensor([1.0])]
    combine_lora_grads(g1, g2, 0.5)
    assert g1[0].item() == 1.0 and g2[0].item() == 1.0


def test_combine_length_mismatch_raises():
    with pytest.raises(ValueError):
        combine_lora_grads([torch.zeros(1)], [], 0.5)


def test_two_pass_combination_equals_gradient_of_meta_objective():
    # Toy losses in (theta, thetahat, w); the two-pass recipe must give grad_w of
    # -f = (1 - lam) L_SFT(theta, w) + lam [L_RL(theta, w) - L_RL(thetahat, w)]   (Eq. 10)
    torch.manual_seed(0)
    lam = 0.3
    theta, shadow = torch.randn(3), torch.randn(3)
    w = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]

    def l_sft(th):
        return ((th + w[0]) ** 2).sum() + (w[1] ** 3).sum()

    def l_rl(th):
        return torch.sin(th * w[0]).sum() + (th[:2] * w[1]).sum()

    g1 = torch.autograd.grad(joint_loss(l_sft(theta), l_rl(theta), lam), w)
    g2 = torch.autograd.grad(l_rl(shadow), w)
    combined = combine_lora_grads(list(g1), list(g2), lam)
    meta = torch.autograd.grad((1 - lam) * l_sft(theta) + lam * (l_rl(theta) - l_rl(shadow)), w)
    for c, m in zip(combined, meta):
        assert torch.allclose(c, m, atol=1e-6)


def test_joint_loss_hand_computed():
    assert joint_loss(torch.tensor(2.0), torch.tensor(4.0), 0.5).item() == pytest.approx(3.0)
    assert joint_loss(torch.tensor(2.0), torch.tensor(4.0), 0.3).item() == pytest.approx(2.6)


def test_cooperative_gain_is_theta_minus_shadow():
    assert cooperative_gain(0.6, 0.4) == pytest.approx(0.2)
    assert cooperative_gain(torch.tensor(0.4), torch.tensor(0.6)).item() == pytest.approx(-0.2)


def test_cooperative_gain_under_reward_flips_is_scaled_not_shifted():
    # Flip each reward with rate p: E[R'] = (1 - 2p) E[R] + p. The bias p cancels in the gain.
    p, r_theta, r_shadow = 0.2, 0.55, 0.35
    noisy = cooperative_gain((1 - 2 * p) * r_theta + p, (1 - 2 * p) * r_shadow + p)
    assert noisy == pytest.approx((1 - 2 * p) * cooperative_gain(r_theta, r_shadow))


def test_constant_lam_schedule():
    assert [lam_at(s, 10, "constant", 0.5) for s in (0, 5, 9, 20)] == [0.5] * 4


def test_linear_lam_goes_from_start_at_step_zero_to_lam_at_last_step():
    assert lam_at(0, 11, "linear", lam=0.7, lam_start=0.2) == pytest.approx(0.2)
    assert lam_at(5, 11, "linear", lam=0.7, lam_start=0.2) == pytest.approx(0.45)
    assert lam_at(10, 11, "linear", lam=0.7, lam_start=0.2) == pytest.approx(0.7)
    assert lam_at(50, 11, "linear", lam=0.7, lam_start=0.2) == pytest.approx(0.7)
    assert lam_at(0, 1, "linear", lam=0.7, lam_start=0.2) == pytest.approx(0.2)


def test_lam_schedule_rejects_unknown_schedule_and_out_of_range_lam():
    with pytest.raises(ValueError, match="constant, linear"):
        lam_at(0, 10, "cosine")
    with pytest.raises(ValueError):
        lam_at(0, 10, "constant", lam=1.5)
    with pytest.raises(ValueError):
        lam_at(0, 10, "linear", lam=0.5, lam_start=-0.1)
