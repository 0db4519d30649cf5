"""models/kv_cache: the position ids and cache lookup that generation and the RL passes share."""

from __future__ import annotations

import torch

from bridgerl.models.kv_cache import left_padded_positions, output_cache


def test_positions_count_real_tokens_from_zero_under_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert left_padded_positions(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 2], [0, 1, 2, 3, 4]]


def test_the_cache_is_found_under_either_transformers_name():
    assert output_cache({"logits": 1, "past_key_values": "kv"}) == ("past_key_values", "kv")
    assert output_cache({"logits": 1, "cache": "kv"}) == ("cache", "kv")
