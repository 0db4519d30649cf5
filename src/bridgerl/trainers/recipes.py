"""One step function per recipe. Each reads top to bottom as named phases built from
`phases`; none holds numeric code of its own (that lives in `bridgerl.algos`).

Every step returns the metrics it produced; the shared loop (`loop.py`) logs them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bridgerl.algos import combine_lora_grads, group_advantages, lam_at
from bridgerl.tasks.base import render_prompt
from bridgerl.trainers.batch import concat, encode_pairs, from_rollout
from bridgerl.trainers.phases import (RLBatch, generate_and_grade, optimizer_step, policy, rl_batch, rl_pass,
                                      rl_prompts, rollout_metrics, sampler_logp, sft_batch, sft_pass, start_stage,
                                      with_expert_rows)
from bridgerl.trainers.state import TrainState

Metrics = dict[str, float]


def sft_step(st: TrainState) -> Metrics:
    m: Metrics = {"phase_sft": 1.0}
    batch = sft_batch(st)
    with st.timer("sft_fwd_bwd"):
        m["loss/sft"] = sft_pass(st, batch, metrics=m)
    optimizer_step(st, ("theta",), m)
    return m


def rl_update(st: TrainState, rb: RLBatch, m: Metrics) -> Metrics:
    """One policy-gradient update of theta on a prepared batch (GRPO; LUFFY's mixed groups)."""
    with st.timer("rl_fwd_bwd"):
        m["loss/rl"], _, pm = rl_pass(st, rb)
    m.update(pm)
    optimizer_step(st, ("theta",), m)
    return m


def grpo_step(st: TrainState) -> Metrics:
    m: Metrics = {"phase_sft": 0.0}
    return rl_update(st, rl_batch(st, m), m)


def cold_start_step(st: TrainState) -> Metrics:
    """Two decoupled stages in one run: SFT for the first `baseline.sft_steps`, then GRPO from the
    SFT weights with fresh optimizer moments at `baseline.cold_start_rl_lr`, as a second run would."""
    b = st.cfg.baseline
    sft_steps = b.sft_steps if b.sft_steps is not None else st.cfg.train.steps // 2
    if st.step < sft_steps:
        return sft_step(st)
    if st.step == sft_steps:
        start_stage(st, "theta", b.cold_start_rl_lr if b.cold_start_rl_lr is not None else st.cfg.optim.lr)
    return grpo_step(st)


def alternate_step(st: TrainState) -> Metrics:
    """Naive alternating (BRIDGE paper, Alg. 1): GRPO updates, then SFT updates, in turn."""
    k = st.cfg.baseline.alternate_interval
    return grpo_step(st) if (st.step // k) % 2 == 0 else sft_step(st)


def mix_step(st: TrainState) -> Metrics:
    """Naive mixing: one update on L_RL + mu L_SFT, one set of weights."""
    m: Metrics = {}
    rb = rl_batch(st, m)
    batch = sft_batch(st)
    with st.timer("rl_fwd_bwd"):
        m["loss/rl"], _, pm = rl_pass(st, rb)
    with st.timer("sft_fwd_bwd"):
        m["loss/sft"] = sft_pass(st, batch, scale=st.cfg.baseline.mix_mu, metrics=m)
    m.update(pm)
    optimizer_step(st, ("theta",), m)
    return m


def chord_mu(step: int, peak: float, valley: float, warmup: int, decay: int) -> float:
    """CHORD-mu's weight at a 0-based step (the released mu_schedule_function): linear from 0 at step 0
    to the peak at step `warmup`, cosine decay to the valley at step warmup + decay, then flat."""
    if step < warmup:
        return peak * step / warmup
    if step >= warmup + decay:
        return valley
    t = (step - warmup) / decay
    return valley + 0.5 * (peak - valley) * (1 + math.cos(math.pi * t))


def chord_step(st: TrainState) -> Metrics:
    """CHORD: (1 - mu) L_GRPO + mu L_SFT. baseline.chord_variant "mu": mu on its schedule, plain SFT;
    "phi": a constant mu and the per-token weight phi = p(1-p) on expert tokens."""
    b = st.cfg.baseline
    phi = b.chord_variant == "phi"
    mu = b.chord_phi_mu if phi else chord_mu(st.step, b.chord_mu_peak, b.chord_mu_valley, b.chord_warmup_steps,
                                             b.chord_decay_steps)
    m: Metrics = {"chord/mu": mu}
    rb = rl_batch(st, m)
    batch = sft_batch(st)
    with st.timer("rl_fwd_bwd"):
        m["loss/rl"], _, pm = rl_pass(st, rb, scale=1.0 - mu)
    with st.timer("sft_fwd_bwd"):
        m["loss/sft"] = sft_pass(st, batch, scale=mu, phi=phi, metrics=m)
    m.update(pm)
    optimizer_step(st, ("theta",), m)
    return m


def luffy_step(st: TrainState) -> Metrics:
    """LUFFY: per prompt G-1 on-policy rollouts + its expert trace, advantages over the union
    group (mean-centred, no std), shaped ratio p/(p+gamma) on the expert tokens."""
    cfg = st.cfg
    G = cfg.rollout.num_generations
    examples = rl_prompts(st)
    m: Metrics = {}
    rollout, rewards, rows = generate_and_grade(st, examples, G - 1)
    m.update(rollout_metrics(rollout, rewards, G - 1))
    prompts = [render_prompt(st.task, e, st.tokenizer) for e in examples]
    expert = encode_pairs(st.tokenizer, prompts, [e.solution for e in examples], device=st.device)
    with st.timer("grade"):
        expert_rewards = torch.tensor(st.task.reward_batch(examples, [e.solution for e in examples]))
    m["luffy/expert_reward"] = expert_rewards.mean().item()
    # Build the union groups: rows i*G .. i*G+G-2 are prompt i's rollouts, row i*G+G-1 its expert.
    mixed = concat([from_rollout(rollout), expert], st.tokenizer.pad_token_id)
    order = torch.tensor([j for i in range(len(examples)) for j in [*range(i * (G - 1), (i + 1) * (G - 1)),
                                                                     len(rows) + i]])
    all_rewards = torch.cat([rewards, expert_rewards.float()])[order]
    off_policy = torch.zeros(len(order), dtype=torch.bool)
    off_policy[G - 1 :: G] = True
    adv = group_advantages(all_rewards, G, scale="none")  # LUFFY's released config: no std division
    rb = RLBatch([e for e in examples for _ in range(G)], mixed.select(order), all_rewards, adv, off_policy,
                 with_expert_rows(sampler_logp(st, rollout), len(examples), mixed.completion_ids.shape[1], order))
    return rl_update(st, rb, m)


def bridge_step(st: TrainState) -> Metrics:
    """One BRIDGE iteration (method.md section 4, Eqs. 7-9).

    One rollout from pi(theta, w); pass 1: (1-lam) L_SFT + lam L_RL at theta -> theta.grad, g1;
    pass 2: L_RL at thetahat -> thetahat.grad, g2; w.grad = g1 - lam g2; three optimizer steps.
    All gradients are taken at the iteration's start (simultaneous). Pass 2 uses rollouts thetahat + w
    samples itself for the same prompts (`bridge.shadow_rollouts=own`, on-policy: docs/decisions.md) or
    theta's rollouts (ratio against pi_old(theta, w) from pass 1; `shared`, the paper's v3).
    With its own rollouts pass 2 needs nothing from pass 1, so it runs first and thetahat steps at
    once: its gradients are gone before theta's exist (a lower peak memory; the same numbers).
    """
    cfg = st.cfg
    lam = lam_at(st.step, cfg.train.steps, cfg.bridge.lam_schedule, cfg.bridge.lam, cfg.bridge.lam_start)
    m: Metrics = {"bridge/lam": lam}
    examples = rl_prompts(st)
    rb = rl_batch(st, m, examples)
    batch = sft_batch(st)
    own = st.shadow is not None and cfg.bridge.shadow_rollouts == "own"

    if own:  # thetahat + w samples the same prompts itself: J_RL(thetahat, w) on its own policy
        st.page_out("theta")  # lean shadow: theta's weights leave memory until pass 1 touches them
        sm: Metrics = {}
        with policy(st, shadow=True):
            rb_hat = rl_batch(st, sm, examples)
        m.update({f"shadow/{k}": v for k, v in sm.items()})
        m["bridge/reward_gain"] = m["reward"] - sm["reward"]  # J_RL(theta, w) - J_RL(thetahat, w), rewards
        g2 = shadow_pass(st, rb_hat, None, m)  # pass 2: grad L_RL(thetahat, w)
        optimizer_step(st, ("shadow",), m)
        st.page_out("shadow")  # and thetahat's until its next use

    with st.timer("sft_fwd_bwd"):  # pass 1, SFT term: (1 - lam) grad L_SFT(theta, w)
        m["loss/sft"] = sft_pass(st, batch, scale=1.0 - lam, metrics=m)
    with st.timer("rl_fwd_bwd"):  # pass 1, RL term: lam grad L_RL(theta, w)
        m["loss/rl"], logp_old, pm = rl_pass(st, rb, scale=lam)
    m.update(pm)

    if st.shadow is not None:
        if not own:  # pass 2 on theta's rollouts, against pi_old(theta, w) from pass 1
            g2 = shadow_pass(st, rb, logp_old, m)
        lora = st.group_params("lora")
        for p, g in zip(lora, combine_lora_grads([p.grad for p in lora], g2, lam, meta=True)):  # Eq. 8
            p.grad = g
        # The cooperative gain on this batch, J_RL(theta, w) - J_RL(thetahat, w) (Eq. 10 bracket).
        m["bridge/coop_gain"] = m["loss/rl_shadow"] - m["loss/rl"]
    optimizer_step(st, ("theta", "lora", "shadow") if st.shadow is not None and not own else ("theta", "lora"), m)
    return m


def shadow_pass(st: TrainState, rb: RLBatch, old_logp: torch.Tensor | None, m: Metrics) -> list[torch.Tensor | None]:
    """BRIDGE's pass 2: grad L_RL(thetahat, w) into thetahat's .grad; returns w's part, g2, and leaves
    w's .grad as it found it. old_logp: the sampling policy's log-probs (None: on-policy)."""
    lora = st.group_params("lora")
    held = [p.grad for p in lora]
    for p in lora:
        p.grad = None
    with st.timer("shadow_fwd_bwd"):
        m["loss/rl_shadow"], logp_hat, hm = rl_pass(st, rb, params=st.shadow, old_logp=old_logp)
    g2 = [p.grad for p in lora]
    for p, g in zip(lora, held):
        p.grad = g
    if old_logp is not None:
        mask = rb.batch.completion_mask.bool()
        m["shadow/logp_gap"] = (logp_hat - old_logp)[mask].mean().item() if mask.any() else 0.0
    m["shadow/clip_ratio/region_mean"] = hm.get("clip_ratio/region_mean", 0.0)
    return g2


STEPS: dict[str, Callable[[TrainState], Metrics]] = {
    "sft": sft_step,
    "grpo": grpo_step,
    "cold-start": cold_start_step,
    "alternate": alternate_step,
    "mix": mix_step,
    "chord": chord_step,
    "luffy": luffy_step,
    "bridge": bridge_step,
}
