"""The phases every recipe is made of: rollout, grading, loss passes, optimizer steps.

A pass runs forward + backward over micro-batches of one batch; the loss of each micro-batch
is normalised by the *whole* batch's token / sequence counts (algos.aggregate), so the
accumulated gradient equals the full-batch gradient whatever the micro-batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from bridgerl.algos import (PRESETS, chord_phi_weights, expert_token_stats, group_advantages, group_stats,
                            policy_loss, sampler_importance_weights, sft_loss, zero_std_group_mask)
from bridgerl.rollout.base import Rollout, SamplingParams
from bridgerl.tasks.base import Example, render_prompt
from bridgerl.trainers.batch import TokenBatch, encode_pairs, from_rollout, sequence_logprobs, widen
from bridgerl.trainers.state import TrainState
from bridgerl.models.lora import swapped
from bridgerl.utils.sharding import is_sharded


@dataclass
class RLBatch:
    examples: list[Example]  # one per row (each prompt repeated G times)
    batch: TokenBatch
    rewards: torch.Tensor  # [B]
    advantages: torch.Tensor  # [B]
    off_policy: torch.Tensor | None = None  # [B] bool, LUFFY's expert rows
    sampler_logp: torch.Tensor | None = None  # [B, C] the sampling engine's log-probs (importance correction)


def preset(st: TrainState) -> dict:
    values = dict(PRESETS[st.cfg.loss.preset])
    if st.cfg.loss.aggregation:
        values["aggregation"] = st.cfg.loss.aggregation
    return values


def sampling(st: TrainState, n: int) -> SamplingParams:
    r = st.cfg.rollout
    return SamplingParams(max_new_tokens=r.max_new_tokens, temperature=r.temperature, top_p=r.top_p, n=n)


def rollout_metrics(rollout: Rollout, rewards: torch.Tensor, group: int) -> dict[str, float]:
    lengths = rollout.completion_mask.sum(1).float()
    return {
        **group_stats(rewards, group),
        "completions/mean_length": lengths.mean().item(),
        "completions/max_length": lengths.max().item(),
        "completions/clipped_ratio": sum(r == "length" for r in rollout.finish_reasons) / len(rollout),
    }


def generate_and_grade(st: TrainState, examples: list[Example], n: int) -> tuple[Rollout, torch.Tensor, list[Example]]:
    prompts = [render_prompt(st.task, e, st.tokenizer) for e in examples]
    with st.timer("generate"):
        rollout = st.engine.generate(prompts, sampling(st, n))
    rows = [e for e in examples for _ in range(n)]
    with st.timer("grade"):
        rewards = torch.tensor(st.task.reward_batch(rows, rollout.texts), dtype=torch.float32)
        if st.cfg.rollout.reward_noise > 0:
            rewards = flip_rewards(rewards, st.cfg.rollout.reward_noise, seed=st.cfg.run.seed * 100_003 + st.step)
    return rollout, rewards, rows


def flip_rewards(rewards: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    """Flip each 0/1 reward with probability p (the paper's noisy-reward study). Own generator,
    so the noise does not shift the sampling RNG and every recipe sees the same flips per step."""
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(rewards.shape, generator=g) < p
    return torch.where(flip, 1.0 - rewards, rewards)


def rl_prompts(st: TrainState) -> list[Example]:
    """This rank's share of the step's RL prompts (every rank draws the same indices)."""
    return [st.rl_examples[i] for i in st.dist.shard(st.rl_sampler.take(st.cfg.rollout.prompts_per_step))]


def rl_batch(st: TrainState, metrics: dict[str, float], examples: list[Example] | None = None) -> RLBatch:
    """Roll out G completions per prompt from the current policy, grade, advantages.
    examples: the step's prompts (default: the next ones from the sampler)."""
    cfg = st.cfg
    examples = rl_prompts(st) if examples is None else examples
    G = cfg.rollout.num_generations
    rollout, rewards, rows = generate_and_grade(st, examples, G)
    metrics.update(rollout_metrics(rollout, rewards, G))
    p = preset(st)
    adv = group_advantages(rewards, G, scale=p["advantage_scale"])
    out = RLBatch(rows, from_rollout(rollout), rewards, adv, sampler_logp=sampler_logp(st, rollout))
    if p["drop_zero_std_groups"]:
        keep = zero_std_group_mask(rewards, G)
        metrics["frac_rows_dropped"] = 1.0 - keep.float().mean().item()
        if keep.any():
            sampler = None if out.sampler_logp is None else out.sampler_logp[keep]
            out = RLBatch([r for r, k in zip(rows, keep.tolist()) if k], out.batch.select(keep), rewards[keep], adv[keep],
                          sampler_logp=sampler)
    return out


@contextmanager
def policy(st: TrainState, shadow: bool) -> Iterator[None]:
    """Sample from theta + w, or from thetahat + w (the shadow's own module when sharded)."""
    if not shadow:
        yield
    elif "shadow" in st.views:
        engine_model, st.engine.model = st.engine.model, st.views["shadow"]
        try:
            yield
        finally:
            st.engine.model = engine_model
    else:
        with swapped(st.theta, st.shadow):
            yield


def sampler_logp(st: TrainState, rollout: Rollout) -> torch.Tensor | None:
    """The engine's log-probs of the sampled tokens when the importance correction is on (vLLM)."""
    return rollout.sampler_logp if st.cfg.rollout.vllm_importance_sampling_correction else None


def importance_weights(st: TrainState, trainer_logp: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor):
    """(weights [B, C], metrics) of rollout.vllm_importance_sampling_* for these rows."""
    r = st.cfg.rollout
    return sampler_importance_weights(trainer_logp, sampler, mask, cap=r.vllm_importance_sampling_cap,
                                      mode=r.vllm_importance_sampling_mode)


def with_expert_rows(sampler: torch.Tensor | None, n_expert: int, width: int, order: torch.Tensor
                     ) -> torch.Tensor | None:
    """LUFFY's union groups: the rollouts' sampler log-probs [N, C] padded to `width`, then one NaN row
    (no correction: the expert's tokens were not sampled) per expert trace, rows taken in `order`."""
    if sampler is None:
        return None
    nan = float("nan")
    rows = torch.nn.functional.pad(sampler, (0, width - sampler.shape[1]), value=nan)
    return torch.cat([rows, rows.new_full((n_expert, width), nan)])[order.to(rows.device)]


def sft_batch(st: TrainState) -> TokenBatch:
    examples = [st.sft_examples[i] for i in st.dist.shard(st.sft_sampler.take(st.cfg.train.sft_batch_size))]
    prompts = [render_prompt(st.task, e, st.tokenizer) for e in examples]
    return encode_pairs(st.tokenizer, prompts, [e.solution for e in examples], device=st.device)


def _forward(st: TrainState, batch: TokenBatch, params: dict[str, torch.Tensor] | None, with_entropy: bool,
             entropy_grad: bool = False):
    # A rollout batch's G samples of a prompt run the prompt through the model once (train.share_prompts);
    # not under FSDP, where two forwards before one backward crashed the 2-process test (torch 2.13).
    return sequence_logprobs(st.forward_module(params), batch, with_entropy=with_entropy, entropy_grad=entropy_grad,
                             share_prompts=st.cfg.train.share_prompts and not st.sharded)


def rl_pass(st: TrainState, rb: RLBatch, *, scale: float = 1.0, params: dict[str, torch.Tensor] | None = None,
            old_logp: torch.Tensor | None = None) -> tuple[float, torch.Tensor, dict[str, float]]:
    """Forward + backward of scale * L_RL on the rollouts; returns (loss, logp [B, C] detached, metrics).

    params: evaluate with these parameters swapped in (the shadow thetahat); gradients then
    reach those tensors and the LoRA w. old_logp: log-probs of the sampling policy; None means
    the batch was sampled by the parameters being trained (on-policy, ratio 1). When the batch
    carries the sampling engine's log-probs, each token's surrogate is weighted by the truncated
    importance weight of pi_old against them (algos.importance; its metrics join the others).
    """
    cfg, p = st.cfg, preset(st)
    batch = rb.batch
    # Normalisers count the whole batch over all ranks, so summed gradients equal the full-batch one.
    num_tokens, num_seqs = st.dist.sum(batch.num_tokens), st.dist.sum(len(batch))
    if not p["global_norm"]:  # per-micro-batch normalisation (bnpo): ranks' gradients are averaged
        scale = scale / st.dist.world
    max_len = cfg.rollout.max_new_tokens
    want_entropy = True
    width = batch.completion_ids.shape[1]
    total, sums = 0.0, {}
    logp_all: torch.Tensor | None = None  # [B, width], the rows in the batch's own order
    for rows, chunk in batch.micro_batches(cfg.train.micro_batch_size, cfg.train.micro_batch_tokens):
        C = chunk.completion_ids.shape[1]  # <= width: a length-packed micro-batch is trimmed
        # The entropy bonus needs the entropies' graph (memory: a float32 softmax per row); the metric does not.
        logp, entropy = _forward(st, chunk, params, want_entropy, entropy_grad=cfg.loss.entropy_coef != 0.0)
        old = logp.detach() if old_logp is None else old_logp[rows][:, :C]
        weights = None
        if rb.sampler_logp is not None:
            weights, _ = importance_weights(st, old, rb.sampler_logp[rows][:, :C], chunk.completion_mask)
        ref_logp = None
        if st.ref is not None:
            with torch.no_grad():
                ref_logp, _ = _forward(st, chunk, st.ref, False)
        loss, m = policy_loss(
            logp, old, rb.advantages[rows].to(logp.device), chunk.completion_mask,
            clip_eps_low=cfg.loss.clip_eps_low,
            clip_eps_high=cfg.loss.clip_eps_high if cfg.loss.clip_eps_high is not None else p["clip_eps_high"],
            aggregation=p["aggregation"],
            num_tokens=num_tokens if p["global_norm"] else None,
            num_seqs=num_seqs if p["global_norm"] else None,
            max_len=max_len, ref_logp=ref_logp, kl_coef=cfg.loss.kl_coef, kl_estimator=cfg.loss.kl_estimator,
            entropy=entropy, entropy_coef=cfg.loss.entropy_coef,
            off_policy=None if rb.off_policy is None else rb.off_policy[rows],
            shaped_gamma=cfg.baseline.luffy_gamma, token_weights=weights,
        )
        (scale * loss).backward()
        total += loss.item()
        if logp_all is None:
            logp_all = logp.new_zeros((len(batch), width))
        logp_all[rows] = widen(logp.detach(), width)
        weight = chunk.num_tokens
        for k, v in m.items():
            sums[k] = sums.get(k, 0.0) + float(v) * weight
    metrics = {k: v / max(1.0, num_tokens) for k, v in sums.items()}
    if rb.sampler_logp is not None:  # min / max need the whole batch, not micro-batch means
        old_all = logp_all if old_logp is None else old_logp
        _, im = importance_weights(st, old_all, rb.sampler_logp, batch.completion_mask)
        metrics.update({k: float(v) for k, v in im.items()})
    return total, logp_all, metrics


def sft_pass(st: TrainState, batch: TokenBatch, *, scale: float = 1.0, phi: bool = False,
             metrics: dict[str, float] | None = None) -> float:
    """Forward + backward of scale * L_SFT (token-mean NLL; CHORD-phi weights when phi).

    metrics: if given, receives sft/prob_mean, sft/low_prob_frac (and sft/phi_mean with phi):
    how much of the demonstration the model can already produce.
    """
    num_tokens = st.dist.sum(batch.num_tokens)
    total, sums = 0.0, {}
    for _, chunk in batch.micro_batches(st.cfg.train.micro_batch_size, st.cfg.train.micro_batch_tokens):
        logp, _ = sequence_logprobs(st.model, chunk)
        weights = chord_phi_weights(logp) if phi else None
        loss = sft_loss(logp, chunk.completion_mask, token_weights=weights, num_tokens=num_tokens)
        (scale * loss).backward()
        total += loss.item()
        if metrics is not None:
            for k, v in expert_token_stats(logp, chunk.completion_mask, weights).items():
                sums[k] = sums.get(k, 0.0) + float(v) * chunk.num_tokens
    if metrics is not None:  # the weights here are CHORD's phi
        names = {"prob_mean": "sft/prob_mean", "low_prob_frac": "sft/low_prob_frac", "weight_mean": "sft/phi_mean"}
        metrics.update({names[k]: v / max(1, batch.num_tokens) for k, v in sums.items()})
    return total


def start_stage(st: TrainState, group: str, lr: float) -> None:
    """Begin a new training stage for one group, as a separate run from the last weights would:
    its optimizer forgets its moments and takes the stage's base rate (the schedule's factor goes on)."""
    opt, sched = st.optimizers[group], st.schedulers[group]
    opt.state.clear()
    sched.base_lrs = [lr for _ in opt.param_groups]
    for pg, factor in zip(opt.param_groups, sched.lr_lambdas):
        pg["lr"] = lr * factor(sched.last_epoch)
        pg["initial_lr"] = lr


def optimizer_step(st: TrainState, groups: tuple[str, ...], metrics: dict[str, float]) -> None:
    """Clip each group's gradient norm, step its optimizer and scheduler, zero its gradients."""
    with st.timer("optim"):
        for g in groups:
            params = st.group_params(g)
            st.dist.reduce_grads(params)
            norm = torch.nn.utils.clip_grad_norm_(params, st.cfg.optim.max_grad_norm)
            metrics[f"grad_norm/{g}"] = float(norm.full_tensor() if is_sharded(norm) else norm)
            st.optimizers[g].step()
            st.schedulers[g].step()
            st.optimizers[g].zero_grad(set_to_none=True)
            metrics[f"lr/{g}"] = st.schedulers[g].get_last_lr()[0]
        if {"theta", "lora"} & set(groups):  # the policy the engine samples moved (thetahat is never served)
            st.engine.sync(st.model)
