"""held_mb counts what a process holds of the training state, each tensor once."""

from __future__ import annotations

import torch

from bridgerl.utils.memory import held_mb


def test_held_mb_counts_weights_gradients_and_adam_moments_once():
    layer = torch.nn.Linear(4, 3)  # 12 + 3 float32 values
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    assert held_mb(layer.parameters(), [opt]) * 2**20 == 15 * 4  # weights only: no grads, no state yet
    layer(torch.ones(2, 4)).sum().backward()
    opt.step()
    # weights + gradients + exp_avg + exp_avg_sq (15 values each) + one float32 step count per tensor
    expected = 4 * 15 * 4 + 2 * 4
    shared = [*layer.parameters(), layer.weight]  # a tied or shared tensor is held once
    assert held_mb(shared, [opt]) * 2**20 == expected
