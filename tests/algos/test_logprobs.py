"""token_logprobs and entropy_from_logits against hand values and torch's own kernels."""

import math

import pytest
import torch
import torch.nn.functional as F

from bridgerl.algos.logprobs import entropy_from_logits, token_logprobs


def test_token_logprobs_hand_computed_two_token_vocab():
    # logits (0, ln 3): softmax = (1/4, 3/4)
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]])  # [1, 2, 2]
    tokens = torch.tensor([[1, 0]])
    out = token_logprobs(logits, tokens)
    assert torch.allclose(out, torch.tensor([[math.log(0.75), math.log(0.25)]]), atol=1e-6)


def test_token_logprobs_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    tokens = torch.randint(0, 11, (3, 5))
    ref = -F.cross_entropy(logits.reshape(-1, 11), tokens.reshape(-1), reduction="none").view(3, 5)
    assert torch.allclose(token_logprobs(logits, tokens), ref, atol=1e-5)


def test_token_logprobs_gradient_matches_log_softmax_gather():
    torch.manual_seed(1)
    a = torch.randn(2, 4, 7, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    tokens = torch.randint(0, 7, (2, 4))
    w = torch.randn(2, 4)
    (token_logprobs(a, tokens) * w).sum().backward()
    (torch.log_softmax(b, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * w).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-6)


def test_bf16_logits_give_float32_result_close_to_float64_reference():
    torch.manual_seed(2)
    logits64 = torch.randn(2, 6, 50, dtype=torch.float64) * 3
    tokens = torch.randint(0, 50, (2, 6))
    logits16 = logits64.to(torch.bfloat16)
    out = token_logprobs(logits16, tokens)
    assert out.dtype == torch.float32
    # reference computed in float64 from the *same* bf16-rounded logits: only the math is compared
    ref = torch.log_softmax(logits16.double(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(out.double(), ref, atol=1e-5)


def test_token_logprobs_shape_mismatch_raises():
    with pytest.raises(ValueError):
        token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


def test_token_logprobs_empty_batch_gives_empty_result():
    out = token_logprobs(torch.zeros(0, 3, 4), torch.zeros(0, 3, dtype=torch.long))
    assert out.shape == (0, 3)


def test_entropy_of_uniform_is_log_vocab_and_of_one_hot_is_zero():
    logits = torch.stack([torch.zeros(8), torch.tensor([100.0] + [0.0] * 7)]).view(1, 2, 8)
    ent = entropy_from_logits(logits)
    assert torch.allclose(ent, torch.tensor([[math.log(8.0), 0.0]]), atol=1e-5)


def test_entropy_matches_categorical_distribution():
    torch.manual_seed(3)
    logits = torch.randn(3, 4, 9) * 2
    ref = torch.distributions.Categorical(logits=logits).entropy()
    assert entropy_from_logits(logits.to(torch.bfloat16)).dtype == torch.float32
    assert torch.allclose(entropy_from_logits(logits), ref, atol=1e-5)


def test_entropy_with_minus_inf_logits_is_finite_with_finite_gradient():
    # Vocabulary masking: two impossible tokens must contribute 0, not NaN.
    logits = torch.tensor([[[0.0, 0.0, -math.inf, -math.inf]]], requires_grad=True)
    ent = entropy_from_logits(logits)
    assert torch.allclose(ent, torch.tensor([[math.log(2.0)]]), atol=1e-6)
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()
