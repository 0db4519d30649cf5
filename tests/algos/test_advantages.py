"""group_advantages, zero_std_group_mask and group_stats on hand-computed groups."""

import statistics

import pytest
import torch

from bridgerl.algos.advantages import group_advantages, group_stats, zero_std_group_mask

EPS = 1e-4


def test_group_scale_hand_computed_with_unbiased_std():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    # group 1: mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    # group 2: mean 0.5,  unbiased std sqrt(4 * 0.25 / 3) = 0.57735
    s2 = (1 / 3) ** 0.5
    expected = torch.tensor(
        [0.75 / (0.5 + EPS)] + [-0.25 / (0.5 + EPS)] * 3
        + [0.5 / (s2 + EPS)] * 2 + [-0.5 / (s2 + EPS)] * 2
    )
    assert torch.allclose(group_advantages(rewards, 4), expected, atol=1e-6)


def test_none_scale_is_mean_centring_only():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5])
    assert torch.allclose(group_advantages(rewards, 4, scale="none"), expected)


def test_batch_scale_divides_by_whole_batch_std():
    rewards = torch.tensor([1.0, 0, 0, 0, 1, 1, 0, 0])
    # batch: 3 ones, 5 zeros, mean 0.375; unbiased var = (3 * 0.625^2 + 5 * 0.375^2) / 7 = 1.875 / 7
    std = (1.875 / 7) ** 0.5
    expected = torch.tensor([0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5]) / (std + EPS)
    assert torch.allclose(group_advantages(rewards, 4, scale="batch"), expected, atol=1e-6)


def test_group_scale_matches_python_statistics_loop():
    torch.manual_seed(0)
    g = 5
    rewards = torch.rand(6 * g)
    out = group_advantages(rewards, g)
    for i in range(6):
        grp = rewards[i * g : (i + 1) * g].tolist()
        mean, sd = statistics.mean(grp), statistics.stdev(grp)
        for j, r in enumerate(grp):
            assert out[i * g + j].item() == pytest.approx((r - mean) / (sd + EPS), abs=1e-5)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_constant_group_gets_zero_advantage(scale):
    rewards = torch.tensor([1.0, 1, 1, 0, 0, 0, 1, 0, 1])
    out = group_advantages(rewards, 3, scale=scale)
    assert torch.equal(out[:6], torch.zeros(6))
    assert out[6:].abs().sum() > 0


def test_group_of_one_gives_zero_not_nan():
    out = group_advantages(torch.tensor([1.0, 0.0, 1.0]), 1)
    assert torch.equal(out, torch.zeros(3))
    assert group_stats(torch.tensor([1.0, 0.0]), 1)["reward_std"] == 0.0


def test_advantages_are_detached_float32():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    out = group_advantages(rewards, 2)
    assert not out.requires_grad and out.dtype == torch.float32


def test_length_not_multiple_of_group_raises():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(7), 4)


def test_unknown_scale_raises_naming_valid_ones():
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.zeros(4), 2, scale="std")


def test_zero_std_mask_keeps_only_groups_with_variance():
    rewards = torch.tensor([1.0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
    expected = torch.tensor([True] * 4 + [False] * 8)
    assert torch.equal(zero_std_group_mask(rewards, 4), expected)


def test_group_stats_hand_computed():
    rewards = torch.tensor([1.0, 1, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
    stats = group_stats(rewards, 4)
    # std of group 1 = sqrt(4 * 0.25 / 3); groups 2, 3 have std 0
    assert stats["reward"] == pytest.approx(6 / 12)
    assert stats["reward_std"] == pytest.approx((1 / 3) ** 0.5 / 3)
    assert stats["frac_reward_zero_std"] == pytest.approx(2 / 3)
    assert all(isinstance(v, float) for v in stats.values())


def test_frac_zero_std_agrees_with_zero_std_mask():
    torch.manual_seed(1)
    rewards = (torch.rand(40) < 0.3).float()
    keep = zero_std_group_mask(rewards, 4).view(-1, 4)[:, 0]
    frac = group_stats(rewards, 4)["frac_reward_zero_std"]
    assert frac == pytest.approx(1 - keep.float().mean().item())
