"""CHORD's two published variants (arXiv 2508.11408), each one step of the trainer against a reference
computed by hand, and CHORD-mu's schedule against the released one (mu = 0 at step 0)."""

from __future__ import annotations

import copy

import pytest
import torch

from bridgerl.config import ConfigError
from bridgerl.config_load import load_config
from bridgerl.tasks.base import SFT_TRAIN, Example
from bridgerl.trainers.recipes import chord_mu, chord_step
from bridgerl.trainers.state import build_state

from conftest import RL_GROUPS, SFT_PAIRS, FixedEngine, ListTask, exact_config, row_forward, tiny_llama

SCHEDULE = ["baseline.chord_mu_peak=0.5", "baseline.chord_mu_valley=0.02", "baseline.chord_warmup_steps=4",
            "baseline.chord_decay_steps=8"]


def test_chord_mu_warms_up_from_zero_then_decays_along_a_cosine_to_the_valley():
    mu = [chord_mu(s, 0.5, 0.02, 4, 8) for s in range(16)]
    assert mu[:5] == pytest.approx([0.0, 0.125, 0.25, 0.375, 0.5])  # step 0 trains no SFT at all
    assert mu[8] == pytest.approx((0.5 + 0.02) / 2)  # half-way through the cosine
    assert mu[6] == pytest.approx(0.02 + 0.24 * (1 + 2 ** -0.5))  # cos(pi / 4)
    assert mu[12:] == pytest.approx([0.02] * 4)
    assert all(a > b for a, b in zip(mu[4:12], mu[5:13]))
    assert chord_mu(0, 0.9, 0.05, 0, 200) == pytest.approx(0.9)  # the released CHORD-mu: no warm-up
    assert chord_mu(3, 0.9, 0.05, 3, 0) == pytest.approx(0.05)  # no decay: the valley right after warm-up


def _chord_state(tokenizer, *overrides, sft_pairs=None):
    model = tiny_llama(tokenizer, seed=0)
    plain = copy.deepcopy(model)
    task = ListTask()
    if sft_pairs is not None:
        task.splits[SFT_TRAIN] = [Example(q, q, "", solution=s) for q, s in sft_pairs]
    st = build_state(exact_config("recipe=chord", *overrides), task, model, tokenizer, FixedEngine(tokenizer))
    return st, plain


def test_first_warm_up_step_of_chord_mu_is_pure_grpo(tokenizer):
    """mu(0) = 0: the SFT batch cannot move theta at step 0; at step 1 it does."""
    other = [(q, "9+9=18;#18") for q, _ in SFT_PAIRS]
    for step, same in [(0, True), (1, False)]:
        a, _ = _chord_state(tokenizer, "baseline.chord_variant=mu", *SCHEDULE)
        b, _ = _chord_state(tokenizer, "baseline.chord_variant=mu", *SCHEDULE, sft_pairs=other)
        a.step = b.step = step
        m = chord_step(a)
        chord_step(b)
        assert m["chord/mu"] == pytest.approx(0.125 * step)
        assert all(torch.equal(a.theta[n], b.theta[n]) for n in a.theta) == same


@pytest.mark.parametrize("variant,step,mu", [("mu", 2, 0.25), ("mu", 8, 0.26), ("phi", 2, 0.1), ("phi", 8, 0.1)])
def test_chord_step_is_the_variants_loss(tokenizer, variant, step, mu):
    """theta moves by lr * grad [(1 - mu) L_GRPO + mu L_SFT]; L_SFT weights each expert token by
    phi = p(1-p) (detached) in CHORD-phi and by 1 in CHORD-mu; mu follows the schedule only in CHORD-mu."""
    st, plain = _chord_state(tokenizer, f"baseline.chord_variant={variant}", "baseline.chord_phi_mu=0.1", *SCHEDULE)
    st.step = step
    theta0 = {n: p.detach().clone() for n, p in st.theta.items()}
    m = chord_step(st)
    assert m["chord/mu"] == pytest.approx(mu)
    assert ("sft/phi_mean" in m) == (variant == "phi")

    theta = {n: t.clone().requires_grad_(True) for n, t in theta0.items()}
    sft = [row_forward(plain, theta, tokenizer, f"Q:{q}=\nA:", s)[0] for q, s in SFT_PAIRS]
    weight = [(x.detach().exp() * (1 - x.detach().exp())) if variant == "phi" else torch.ones_like(x) for x in sft]
    l_sft = -sum((w * x).sum() for w, x in zip(weight, sft)) / sum(len(x) for x in sft)
    rl, count = 0.0, 0
    for q, group in RL_GROUPS.items():  # on-policy: ratio 1, nothing clipped
        r = torch.tensor([rw for _, rw in group], dtype=torch.float64)
        for (c, _), a in zip(group, (r - r.mean()) / (r.std() + 1e-4)):
            logp = row_forward(plain, theta, tokenizer, f"Q:{q}=\nA:", c)[0]
            rl, count = rl - (torch.exp(logp - logp.detach()) * a).sum(), count + len(logp)
    grads = torch.autograd.grad((1 - mu) * rl / count + mu * l_sft, list(theta.values()))
    for (n, t0), g in zip(theta0.items(), grads):
        torch.testing.assert_close(st.theta[n].detach(), t0 - st.cfg.optim.lr * g, atol=1e-6, rtol=0)


def test_chord_variant_is_one_of_the_published_two():
    assert load_config(None, ["recipe=chord"]).baseline.chord_variant == "phi"
    with pytest.raises(ConfigError, match="mu, phi"):
        load_config(None, ["baseline.chord_variant=both"])
    with pytest.raises(ConfigError, match="chord_variant"):  # the replaced switch names its successor
        load_config(None, ["baseline.chord_phi=false"])
