"""The trainer's BRIDGE step is exactly Eqs. 7-9 of the paper (method.md section 4).

The expected theta, thetahat and w after one step are computed independently: per-row
forwards of a plain (un-wrapped) copy of the model on unpadded rows (the trainer's batches are
left- and right-padded: conftest's questions differ in length), LoRA merged by hand, entropies
from torch.distributions, and `torch.autograd.grad` on the four terms grad_theta/grad_w of
L_SFT(theta, w), L_RL(theta, w) and L_RL(thetahat, w). SGD without clipping makes the update
exactly lr * gradient. L_RL includes the KL term and the entropy bonus when they are on.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from bridgerl.algos.losses import AGGREGATIONS
from bridgerl.trainers.recipes import bridge_step
from bridgerl.trainers.state import build_state

from conftest import (RL_GROUPS, SFT_PAIRS, FixedEngine, ListTask, exact_config, merged_params, row_forward,
                      tiny_llama)


def _bridge_state(tokenizer, *overrides, tie=False, seed=0):
    model = tiny_llama(tokenizer, seed=seed)
    if tie:
        model.config.tie_word_embeddings = True
        model.tie_weights()
    plain = copy.deepcopy(model)
    st = build_state(exact_config("recipe=bridge", *overrides), ListTask(), model, tokenizer, FixedEngine(tokenizer))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # mid-training state: w != 0 and thetahat != theta
        for name, p in st.lora.items():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for p in (st.shadow or {}).values():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return st, plain


def _snapshot(params):
    return {n: p.detach().clone() for n, p in params.items()}


def _aggregate(rows, mode, max_len):
    """rows: per-token loss tensors [C_i] of every row -> the batch loss, by the definition of each mode."""
    if mode == "token_mean":
        return torch.cat(rows).sum() / sum(len(r) for r in rows)
    if mode == "seq_mean_token_mean":
        return sum(r.mean() for r in rows) / len(rows)
    return sum(r.sum() / max_len for r in rows) / len(rows)  # seq_mean_token_sum_norm


def _losses(plain, tok, cfg, theta, hat, lora, theta0):
    """L_SFT(theta, w), L_RL(theta, w), L_RL(thetahat, w) by hand (hat None: no shadow).

    L_RL per token: -min(r A, clip(r) A) + kl_coef * k3(pi, pi_ref) - entropy_coef * H, with
    r = pi / pi(theta, w) (detached) and pi_ref the starting model (theta0, w = 0), aggregated
    as cfg.loss.aggregation says. L_SFT: token mean over the SFT batch.
    """
    scaling, eps, loss = cfg.lora.alpha / cfg.lora.r, cfg.loss.clip_eps_low, cfg.loss
    sft = [row_forward(plain, merged_params(theta, lora, scaling), tok, f"Q:{q}=\nA:", s)[0] for q, s in SFT_PAIRS]
    l_sft = -torch.cat(sft).sum() / sum(len(x) for x in sft)
    ref = merged_params(theta0, {n: torch.zeros_like(w) for n, w in lora.items()}, scaling)

    def l_rl(weights, sampler):
        rows = []
        for q, group in RL_GROUPS.items():
            r = torch.tensor([rw for _, rw in group], dtype=torch.float64)
            adv = (r - r.mean()) / (r.std() + 1e-4)
            for (c, _), a in zip(group, adv):
                prompt = f"Q:{q}=\nA:"
                old = row_forward(plain, merged_params(sampler, lora, scaling), tok, prompt, c)[0].detach()
                new, entropy = row_forward(plain, merged_params(weights, lora, scaling), tok, prompt, c)
                ratio = torch.exp(new - old)
                per_token = -torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a)
                if loss.kl_coef:
                    log_r = row_forward(plain, ref, tok, prompt, c)[0].detach() - new
                    per_token = per_token + loss.kl_coef * (torch.exp(log_r) - log_r - 1)
                rows.append(per_token - loss.entropy_coef * entropy)
        return _aggregate(rows, loss.aggregation, cfg.rollout.max_new_tokens)

    # thetahat's ratio is against the policy that sampled its rollouts: theta + w (shared), or itself (own)
    own = cfg.bridge.shadow_rollouts == "own"
    return l_sft, l_rl(theta, theta), None if hat is None else l_rl(hat, hat if own else theta)


def _assert_bridge_step_is_exact(tokenizer, *overrides, tie=False):
    """One bridge_step against Eqs. 7-9 computed by hand; returns how far w moved."""
    st, plain = _bridge_state(tokenizer, *overrides, tie=tie)
    cfg, meta = st.cfg, st.cfg.bridge.meta
    lam = cfg.bridge.lam
    theta0, w0 = _snapshot(st.theta), _snapshot(st.lora)
    hat0 = _snapshot(st.shadow) if meta else None
    alpha, beta, alpha_hat = cfg.optim.lr, cfg.optim.lora_lr, cfg.optim.shadow_lr  # each group its own rate

    bridge_step(st)

    theta = {n: t.clone().requires_grad_(True) for n, t in theta0.items()}
    hat = {n: t.clone().requires_grad_(True) for n, t in hat0.items()} if meta else None
    lora = {n: t.clone().requires_grad_(True) for n, t in w0.items()}
    l_sft, l_rl, l_hat = _losses(plain, tokenizer, cfg, theta, hat, lora, theta0)
    names_t, names_w = list(theta), list(lora)
    g_sft = torch.autograd.grad(l_sft, [theta[n] for n in names_t] + [lora[n] for n in names_w], allow_unused=True)
    g_rl = torch.autograd.grad(l_rl, [theta[n] for n in names_t] + [lora[n] for n in names_w], allow_unused=True)
    z = lambda g, like: torch.zeros_like(like) if g is None else g  # noqa: E731
    k = len(names_t)
    if meta:
        g_hat = torch.autograd.grad(l_hat, [hat[n] for n in names_t] + [lora[n] for n in names_w], allow_unused=True)
    else:  # the ablation: no thetahat, no shadow pass, w gets theta's gradient (g1)
        g_hat = [None] * (k + len(names_w))
        assert st.shadow is None and "shadow" not in st.optimizers
    for i, n in enumerate(names_t):  # Eq. 7 and Eq. 9
        expected = theta0[n] - alpha * ((1 - lam) * z(g_sft[i], theta0[n]) + lam * z(g_rl[i], theta0[n]))
        torch.testing.assert_close(st.theta[n].detach(), expected, atol=1e-6, rtol=0)
        if meta:
            expected_hat = hat0[n] - alpha_hat * z(g_hat[i], hat0[n])
            torch.testing.assert_close(st.shadow[n].detach(), expected_hat, atol=1e-6, rtol=0)
    for j, n in enumerate(names_w):  # Eq. 8 (meta=false: (1 - lam) g_sft + lam g_rl, as theta)
        gs, gr, gh = (z(g[k + j], w0[n]) for g in (g_sft, g_rl, g_hat))
        expected = w0[n] - beta * ((1 - lam) * gs + lam * (gr - gh))
        torch.testing.assert_close(st.lora[n].detach(), expected, atol=1e-6, rtol=0)
    return max((st.lora[n] - w0[n]).abs().max().item() for n in names_w)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_bridge_step_equals_equations_7_to_9(tokenizer, tie, lam):
    moved = _assert_bridge_step_is_exact(tokenizer, f"bridge.lam={lam}", tie=tie)
    assert moved > 1e-4  # the check is not vacuous: w really moved


def test_kl_term_enters_both_rl_passes_exactly(tokenizer):
    """KL(pi || pi_ref) to the starting model, k3, in L_RL(theta, w) and L_RL(thetahat, w)."""
    _assert_bridge_step_is_exact(tokenizer, "loss.kl_coef=0.5")


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_entropy_bonus_reaches_theta_thetahat_and_w_aggregated_like_the_surrogate(tokenizer, aggregation):
    """loss.entropy_coef is a differentiable bonus (-coef * H per token) in both RL passes,
    normalised by the run's aggregation like the clipped surrogate. The coefficient is large because
    the tiny model's near-uniform distributions have small entropy gradients: this way the bonus
    moves the weights ~100x the tolerance."""
    _assert_bridge_step_is_exact(tokenizer, "loss.entropy_coef=5.0", f"loss.aggregation={aggregation}")


def test_meta_false_trains_w_with_thetas_gradient_and_keeps_no_shadow(tokenizer):
    """bridge.meta=false, the paper's ablation: w.grad = g1 = (1 - lam) grad L_SFT + lam grad L_RL."""
    moved = _assert_bridge_step_is_exact(tokenizer, "bridge.meta=false", "loss.kl_coef=0.5")
    assert moved > 1e-4


def test_own_shadow_rollouts_give_an_on_policy_shadow_pass(tokenizer):
    """bridge.shadow_rollouts=own: pass 2 is on thetahat + w's own samples, ratio 1 at thetahat (the
    fixed engine returns the same completions, so only the ratio's denominator differs from shared)."""
    moved = _assert_bridge_step_is_exact(tokenizer, "bridge.shadow_rollouts=own")
    assert moved > 1e-4


def test_own_shadow_rollouts_are_sampled_from_thetahat_plus_w(tokenizer):
    st, _ = _bridge_state(tokenizer, "bridge.shadow_rollouts=own")
    seen = []
    engine = st.engine
    probe = next(n for n in st.theta if n.endswith("q_proj.base_layer.weight"))
    original = engine.generate

    def recording(prompts, params):
        seen.append((list(prompts), st.model.get_parameter(probe).detach().clone()))
        return original(prompts, params)

    engine.generate = recording
    theta0, hat0 = st.theta[probe].detach().clone(), st.shadow[probe].detach().clone()
    metrics = bridge_step(st)
    assert len(seen) == 2 and seen[0][0] == seen[1][0]  # the same prompts, sampled twice
    torch.testing.assert_close(seen[0][1], theta0, atol=0, rtol=0)  # theta + w first
    torch.testing.assert_close(seen[1][1], hat0, atol=0, rtol=0)  # then thetahat + w
    assert not torch.equal(theta0, hat0)
    assert "shadow/reward" in metrics and "bridge/reward_gain" in metrics


def test_shadow_update_ignores_the_sft_batch(tokenizer):
    a, _ = _bridge_state(tokenizer)
    b, _ = _bridge_state(tokenizer)
    b.sft_examples = [e.__class__(e.id, e.question, e.answer, solution="9+9=18;#18") for e in b.sft_examples]
    bridge_step(a)
    bridge_step(b)
    for n in a.shadow:
        torch.testing.assert_close(a.shadow[n], b.shadow[n], atol=0, rtol=0)
    assert any(not torch.equal(a.theta[n], b.theta[n]) for n in a.theta)  # theta did see the SFT change


def test_lam_one_removes_sft_from_theta_update(tokenizer):
    a, _ = _bridge_state(tokenizer, "bridge.lam=1.0")
    b, _ = _bridge_state(tokenizer, "bridge.lam=1.0")
    b.sft_examples = [e.__class__(e.id, e.question, e.answer, solution="9+9=18;#18") for e in b.sft_examples]
    bridge_step(a)
    bridge_step(b)
    for n in a.theta:
        torch.testing.assert_close(a.theta[n], b.theta[n], atol=0, rtol=0)
    for n in a.lora:
        torch.testing.assert_close(a.lora[n], b.lora[n], atol=0, rtol=0)


def _rl_part_of_w_update(tokenizer, swap: bool):
    st, _ = _bridge_state(tokenizer, "bridge.lam=1.0")
    if swap:  # exchange theta and thetahat: the cooperative gain changes sign
        with torch.no_grad():
            for n in st.theta:
                t = st.theta[n].detach().clone()
                st.theta[n].copy_(st.shadow[n])
                st.shadow[n].copy_(t)
    w0 = _snapshot(st.lora)
    bridge_step(st)
    return torch.cat([(st.lora[n] - w0[n]).flatten() for n in w0])


def test_w_update_changes_sign_with_the_cooperative_gain(tokenizer):
    d1 = _rl_part_of_w_update(tokenizer, swap=False)
    d2 = _rl_part_of_w_update(tokenizer, swap=True)
    assert d1.norm() > 1e-4
    assert F.cosine_similarity(d1, d2, dim=0) < -0.95


def test_w_sees_no_rl_signal_when_shadow_equals_theta(tokenizer):
    """With thetahat == theta the cooperative gain is 0 and its w-gradient cancels exactly:
    changing the rewards changes theta's update but not w's."""
    runs = []
    for flip in (False, True):
        st, _ = _bridge_state(tokenizer)
        with torch.no_grad():
            for n in st.theta:
                st.shadow[n].copy_(st.theta[n])
        if flip:
            st.task.rewards = {q: {c: 1.0 - r for c, r in g.items()} for q, g in st.task.rewards.items()}
        bridge_step(st)
        runs.append(st)
    a, b = runs
    for n in a.lora:
        torch.testing.assert_close(a.lora[n], b.lora[n], atol=1e-12, rtol=0)
    assert any(not torch.allclose(a.theta[n], b.theta[n]) for n in a.theta)


def test_parameter_groups_are_disjoint_and_cover_every_trainable_parameter(tokenizer):
    st, _ = _bridge_state(tokenizer)
    named = {n for n, p in st.model.named_parameters() if p.requires_grad}
    assert set(st.theta) | set(st.lora) == named
    assert not set(st.theta) & set(st.lora)
    assert set(st.shadow) == set(st.theta)
    assert all(".lora_" in n for n in st.lora) and st.lora
    ptrs = {p.data_ptr() for p in st.theta.values()}
    assert not ptrs & {p.data_ptr() for p in st.shadow.values()}  # thetahat is its own copy
    # one set of LoRA numbers: the optimizer's w tensors are the model's own (shared by both passes)
    opt_ptrs = {p.data_ptr() for g in st.optimizers["lora"].param_groups for p in g["params"]}
    assert opt_ptrs == {p.data_ptr() for n, p in st.model.named_parameters() if ".lora_" in n}


@pytest.mark.parametrize("split", ["train.micro_batch_size=1", "train.micro_batch_tokens=12",
                                   "train.micro_batch_tokens=null"])
def test_micro_batches_give_the_same_bridge_step(tokenizer, split):
    """Row chunks, length-packed and trimmed chunks (12 tokens: a few rows each, widths cut to their own
    longest row) and rollout-order chunks all give the whole-batch update. (Prompts are not shared
    here: a one-row chunk has no other row to share with, and sharing changes the rounding.)"""
    a, _ = _bridge_state(tokenizer, "train.micro_batch_tokens=100000", "train.share_prompts=false")
    b, _ = _bridge_state(tokenizer, split, "train.share_prompts=false")
    bridge_step(a)
    bridge_step(b)
    for group in ("theta", "shadow", "lora"):
        for n, p in getattr(a, group).items():
            torch.testing.assert_close(p, getattr(b, group)[n], atol=1e-10, rtol=0)


@pytest.mark.parametrize("extra", [(), ("lora.merged=false",), ("train.micro_batch_tokens=40",)])
def test_shared_prompt_passes_give_the_same_bridge_step(tokenizer, extra):
    """Each prompt run once for its group's rows (its KV cache indexed out to them), in theta + w's RL
    pass and the shadow's, is the update of running every row whole, up to float rounding."""
    from bridgerl.trainers import batch as batch_mod

    a, _ = _bridge_state(tokenizer, "train.share_prompts=false", *extra)
    b, _ = _bridge_state(tokenizer, "train.share_prompts=true", *extra)
    shared, plain = [], batch_mod.shared_prompt_logits

    def spy(*args):
        out = plain(*args)
        shared.append(out is not None)
        return out

    batch_mod.shared_prompt_logits = spy
    try:
        bridge_step(a)
        assert not shared  # the plain passes never try
        bridge_step(b)
    finally:
        batch_mod.shared_prompt_logits = plain
    # theta + w's RL pass and the shadow's; packed micro-batches of 40 tokens hold a few rows each
    assert len(shared) >= 2 and (any(shared) if extra else all(shared))
    for group in ("theta", "shadow", "lora"):
        for n, p in getattr(a, group).items():
            torch.testing.assert_close(p, getattr(b, group)[n], atol=1e-8, rtol=0)


def test_peft_style_lora_forward_gives_the_same_bridge_step(tokenizer):
    """lora.merged=false (base(x) + s B(A(x)), no merged weight held per layer) is the same update."""
    moved = _assert_bridge_step_is_exact(tokenizer, "lora.merged=false", "bridge.shadow_rollouts=own")
    assert moved > 1e-4
