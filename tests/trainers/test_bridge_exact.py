"""The trainer's BRIDGE step is exactly Eqs. 7-9 of the paper (method.md section 4).

The expected theta, thetahat and w after one step are computed independently: per-row
forwards of a plain (un-wrapped) copy of the model, LoRA merged by hand, and
`torch.autograd.grad` on the four terms grad_theta/grad_w of L_SFT(theta, w), L_RL(theta, w)
and L_RL(thetahat, w). SGD without clipping makes the update exactly lr * gradient.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from bridgerl.trainers.recipes import bridge_step
from bridgerl.trainers.state import build_state

from conftest import RL_GROUPS, SFT_PAIRS, FixedEngine, ListTask, exact_config, tiny_llama


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
        for p in st.shadow.values():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    return st, plain


def _snapshot(params):
    return {n: p.detach().clone() for n, p in params.items()}


def _merged(theta, lora, scaling):
    """Plain transformers parameter names -> W (+ s * B @ A for adapted layers)."""
    out = {}
    for name, w in theta.items():
        if ".base_layer." in name:
            prefix = name[: -len(".base_layer.weight")]
            w = w + scaling * lora[f"{prefix}.lora_B.weight"] @ lora[f"{prefix}.lora_A.weight"]
        out[name.replace(".base_layer.", ".")] = w
    return out


def _row_logp(plain, params, tok, prompt, completion):
    p_ids = tok(prompt)["input_ids"]
    c_ids = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([p_ids + c_ids])
    logits = functional_call(plain, params, (ids,)).logits[0]
    logp = F.log_softmax(logits[len(p_ids) - 1 : -1], dim=-1)
    return logp.gather(-1, torch.tensor(c_ids).unsqueeze(-1)).squeeze(-1)


def _losses(plain, tok, theta, hat, lora, scaling, sft_pairs=SFT_PAIRS, eps=0.2):
    """L_SFT(theta, w), L_RL(theta, w), L_RL(thetahat, w), by hand, token means over the batch."""
    sft = [_row_logp(plain, _merged(theta, lora, scaling), tok, f"Q:{q}=\nA:", s) for q, s in sft_pairs]
    l_sft = -torch.cat(sft).sum() / sum(len(x) for x in sft)

    def l_rl(weights):
        total, count = 0.0, 0
        for q, group in RL_GROUPS.items():
            r = torch.tensor([rw for _, rw in group], dtype=torch.float64)
            adv = (r - r.mean()) / (r.std() + 1e-4)
            for (c, _), a in zip(group, adv):
                old = _row_logp(plain, _merged(theta, lora, scaling), tok, f"Q:{q}=\nA:", c).detach()
                new = _row_logp(plain, _merged(weights, lora, scaling), tok, f"Q:{q}=\nA:", c)
                ratio = torch.exp(new - old)
                total = total - torch.min(ratio * a, ratio.clamp(1 - eps, 1 + eps) * a).sum()
                count += len(c) + 1  # one token per character, plus EOS
        return total / count

    return l_sft, l_rl(theta), l_rl(hat)


@pytest.mark.parametrize("tie", [False, True])
@pytest.mark.parametrize("lam", [0.5, 0.3])
def test_bridge_step_equals_equations_7_to_9(tokenizer, tie, lam):
    st, plain = _bridge_state(tokenizer, f"bridge.lam={lam}", tie=tie)
    theta0, hat0, w0 = _snapshot(st.theta), _snapshot(st.shadow), _snapshot(st.lora)
    scaling = st.cfg.lora.alpha / st.cfg.lora.r
    alpha, beta, alpha_hat = st.cfg.optim.lr, st.cfg.optim.lora_lr, st.cfg.optim.shadow_lr  # each group its own rate

    bridge_step(st)

    theta = {n: t.clone().requires_grad_(True) for n, t in theta0.items()}
    hat = {n: t.clone().requires_grad_(True) for n, t in hat0.items()}
    lora = {n: t.clone().requires_grad_(True) for n, t in w0.items()}
    l_sft, l_rl, l_hat = _losses(plain, tokenizer, theta, hat, lora, scaling)
    names_t, names_w = list(theta), list(lora)
    g_sft = torch.autograd.grad(l_sft, [theta[n] for n in names_t] + [lora[n] for n in names_w], allow_unused=True)
    g_rl = torch.autograd.grad(l_rl, [theta[n] for n in names_t] + [lora[n] for n in names_w], allow_unused=True)
    g_hat = torch.autograd.grad(l_hat, [hat[n] for n in names_t] + [lora[n] for n in names_w], allow_unused=True)
    z = lambda g, like: torch.zeros_like(like) if g is None else g  # noqa: E731
    k = len(names_t)
    for i, n in enumerate(names_t):  # Eq. 7 and Eq. 9
        expected = theta0[n] - alpha * ((1 - lam) * z(g_sft[i], theta0[n]) + lam * z(g_rl[i], theta0[n]))
        torch.testing.assert_close(st.theta[n].detach(), expected, atol=1e-6, rtol=0)
        expected_hat = hat0[n] - alpha_hat * z(g_hat[i], hat0[n])
        torch.testing.assert_close(st.shadow[n].detach(), expected_hat, atol=1e-6, rtol=0)
    for j, n in enumerate(names_w):  # Eq. 8
        gs, gr, gh = (z(g[k + j], w0[n]) for g in (g_sft, g_rl, g_hat))
        expected = w0[n] - beta * ((1 - lam) * gs + lam * (gr - gh))
        torch.testing.assert_close(st.lora[n].detach(), expected, atol=1e-6, rtol=0)
    moved = max((st.lora[n] - w0[n]).abs().max().item() for n in names_w)
    assert moved > 1e-4  # the check is not vacuous: w really moved


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


def test_micro_batches_give_the_same_bridge_step(tokenizer):
    a, _ = _bridge_state(tokenizer)
    b, _ = _bridge_state(tokenizer, "train.micro_batch_size=1")
    bridge_step(a)
    bridge_step(b)
    for group in ("theta", "shadow", "lora"):
        for n, p in getattr(a, group).items():
            torch.testing.assert_close(p, getattr(b, group)[n], atol=1e-10, rtol=0)
