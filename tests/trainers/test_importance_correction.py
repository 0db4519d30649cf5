"""The sampler / trainer importance weight enters the RL loss: rl_pass with a rollout that carries
the sampling engine's log-probs equals the hand-computed weighted GRPO loss and gradient."""

from __future__ import annotations

import math

import pytest
import torch

from bridgerl.rollout.base import SamplingParams
from bridgerl.trainers.batch import from_rollout, sequence_logprobs
from bridgerl.trainers.phases import rl_batch, rl_pass, with_expert_rows
from bridgerl.trainers.state import build_state

from conftest import FixedEngine, ListTask, exact_config, tiny_llama

# log(pi_trainer / pi_sampler) of each completion token, cycling: ratios 1.5, 3 (over the cap 2), 0.5
OFFSETS = [math.log(1.5), math.log(3.0), math.log(0.5)]


class SamplerEngine(FixedEngine):
    """FixedEngine's hand-chosen rollouts, plus the log-probs a second engine reported for them:
    the trainer's own log-probs shifted by known offsets."""

    def __init__(self, tokenizer, model) -> None:
        super().__init__(tokenizer)
        self.model = model

    def generate(self, prompts, params):
        r = super().generate(prompts, params)
        with torch.no_grad():
            logp, _ = sequence_logprobs(self.model, from_rollout(r))
        offsets = torch.tensor([OFFSETS[t % 3] for t in range(logp.shape[1])], dtype=logp.dtype)
        r.sampler_logp = (logp - offsets).float()
        return r


def _state(tokenizer, *overrides):
    model = tiny_llama(tokenizer)
    st = build_state(exact_config("recipe=grpo", *overrides), ListTask(), model, tokenizer,
                     SamplerEngine(tokenizer, model))
    return st, model


def _expected(st, rb, cap: float):
    """-sum_t A_b * w_t * r_t / N with r = exp(logp - logp.detach()) (= 1, gradient of the policy term)."""
    logp, _ = sequence_logprobs(st.model, rb.batch)
    mask = rb.batch.completion_mask.bool()
    w = torch.tensor([min(math.exp(OFFSETS[t % 3]), cap) for t in range(logp.shape[1])], dtype=logp.dtype)
    ratio = torch.exp(logp - logp.detach())
    per_token = -(rb.advantages.to(logp.dtype).unsqueeze(-1) * w * ratio)
    return per_token[mask].sum() / mask.sum()


@pytest.mark.parametrize("cap", [2.0, 5.0])
def test_rl_loss_and_gradient_carry_the_truncated_importance_weight(tokenizer, cap):
    st, model = _state(tokenizer, f"rollout.vllm_importance_sampling_cap={cap}")
    m: dict[str, float] = {}
    rb = rl_batch(st, m)
    assert rb.sampler_logp is not None
    loss, _, pm = rl_pass(st, rb)
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    expected = _expected(st, rb, cap)
    expected.backward()
    assert loss == pytest.approx(expected.item(), abs=1e-7)  # the weights are float32, as the log-probs
    assert got
    for n, p in model.named_parameters():
        if n in got:
            assert torch.allclose(got[n], p.grad, rtol=1e-5, atol=1e-9), n
    assert pm["sampling/importance_sampling_ratio/max"] == pytest.approx(min(3.0, cap))
    assert pm["sampling/importance_sampling_ratio/min"] == pytest.approx(0.5)
    assert pm["sampling/sampling_logp_difference/max"] == pytest.approx(math.log(3.0), abs=1e-6)


def test_micro_batches_give_the_same_weighted_loss(tokenizer):
    whole, _ = _state(tokenizer)
    parts, _ = _state(tokenizer, "train.micro_batch_size=2")
    a = rl_pass(whole, rl_batch(whole, {}))
    b = rl_pass(parts, rl_batch(parts, {}))
    assert a[0] == pytest.approx(b[0], abs=1e-7)
    key = "sampling/importance_sampling_ratio/mean"
    assert a[2][key] == pytest.approx(b[2][key])


def test_switching_the_correction_off_gives_the_plain_loss(tokenizer):
    st, _ = _state(tokenizer, "rollout.vllm_importance_sampling_correction=false")
    rb = rl_batch(st, {})
    assert rb.sampler_logp is None
    loss, _, pm = rl_pass(st, rb)
    logp, _ = sequence_logprobs(st.model, rb.batch)
    mask = rb.batch.completion_mask.bool()
    plain = -(rb.advantages.to(logp.dtype).unsqueeze(-1).expand_as(logp))[mask].sum() / mask.sum()
    assert loss == pytest.approx(plain.item(), abs=1e-7)
    assert not [k for k in pm if k.startswith("sampling/")]


def test_dropped_groups_keep_their_sampler_rows_aligned(tokenizer):
    st, _ = _state(tokenizer, "loss.preset=dapo")  # DAPO drops groups whose rewards are all equal
    st.task.rewards["12+30+4"] = {c: 0.0 for c in st.task.rewards["12+30+4"]}  # the second group: all wrong
    full = st.engine.generate(["Q:1+2=\nA:", "Q:12+30+4=\nA:"], SamplingParams(max_new_tokens=8, n=3))
    m: dict[str, float] = {}
    rb = rl_batch(st, m)
    assert m["frac_rows_dropped"] == pytest.approx(0.5) and len(rb.batch) == 3
    assert torch.equal(rb.batch.completion_ids, full.completion_ids[:3])  # the "1+2" group is what is left
    assert torch.equal(rb.sampler_logp, full.sampler_logp[:3])


def test_luffy_expert_rows_get_no_sampler_logprobs():
    sampler = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0], [-7.0, -8.0]])  # 2 prompts x (G-1 = 2)
    order = torch.tensor([0, 1, 4, 2, 3, 5])  # prompt 0's rollouts, its expert, prompt 1's, its expert
    out = with_expert_rows(sampler, n_expert=2, width=3, order=order)
    assert out.shape == (6, 3)
    assert out[[0, 1, 3, 4], :2].tolist() == sampler.tolist()
    assert torch.isnan(out[[2, 5]]).all() and torch.isnan(out[:, 2]).all()
    assert with_expert_rows(None, 2, 3, order) is None
