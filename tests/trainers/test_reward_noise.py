"""Reward noise (the paper's noisy-reward study): flip_rewards and its use in the rollout phase."""

from __future__ import annotations

import math

import pytest
import torch

from bridgerl.trainers.phases import flip_rewards, generate_and_grade, rl_prompts
from bridgerl.trainers.state import build_state

from conftest import FixedEngine, ListTask, exact_config, tiny_llama

N = 200_000


def _rewards(frac_ones: float) -> torch.Tensor:
    """N rewards, the first frac_ones of them 1 (the rest 0)."""
    r = torch.zeros(N)
    r[: int(N * frac_ones)] = 1.0
    return r


@pytest.mark.parametrize("p", [0.05, 0.2, 0.45])
def test_each_reward_flips_with_probability_p_whatever_its_value(p):
    """A fixed seed; every check is a 5-sigma band around the exact binomial expectation."""
    r = _rewards(0.25)
    out = flip_rewards(r, p, seed=7)
    flipped = out != r
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out[flipped], 1.0 - r[flipped])  # a flip is 1 - r, nothing else
    for part in (r == 1.0, r == 0.0):  # the same rate for correct and wrong answers
        n = int(part.sum())
        assert abs(flipped[part].float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)
    # E[mean reward] = q (1 - p) + (1 - q) p for a share q of ones: 0.35 at p = 0.2
    expected = 0.25 * (1 - p) + 0.75 * p
    sd = math.sqrt(p * (1 - p) / N)
    assert abs(out.mean().item() - expected) < 5 * sd


def test_flips_depend_only_on_the_seed_and_leave_the_global_rng_alone():
    r = _rewards(0.5)[:1000]
    state = torch.random.get_rng_state()
    a = flip_rewards(r, 0.3, seed=11)
    assert torch.equal(torch.random.get_rng_state(), state)  # sampling RNG untouched
    assert torch.equal(a, flip_rewards(r, 0.3, seed=11))
    # every recipe sees the same flips at a step, whatever its rewards: same positions flipped
    assert torch.equal(flip_rewards(1.0 - r, 0.3, seed=11), 1.0 - a)
    assert not torch.equal(a, flip_rewards(r, 0.3, seed=12))
    assert torch.equal(flip_rewards(r, 0.0, seed=11), r)


def test_rollout_phase_flips_graded_rewards_alike_in_every_recipe(tokenizer):
    """generate_and_grade applies rollout.reward_noise to the graded rewards; the flips depend on
    (run.seed, step) only, so two recipes see the same noisy rewards at a step, and steps differ."""
    def state(recipe, noise):
        cfg = exact_config(f"recipe={recipe}", f"rollout.reward_noise={noise}", "run.seed=3")
        return build_state(cfg, ListTask(), tiny_llama(tokenizer), tokenizer, FixedEngine(tokenizer))

    clean_st, grpo_st, mix_st = state("grpo", 0.0), state("grpo", 0.45), state("mix", 0.45)
    patterns = set()
    for step in range(6):
        outs = []
        for st in (clean_st, grpo_st, mix_st):
            st.step = step
            outs.append(generate_and_grade(st, rl_prompts(st), 3))
        (rollout, clean, rows), (_, grpo, _), (_, mix, _) = outs
        assert torch.equal(clean, torch.tensor([clean_st.task.grade(e, t) for e, t in zip(rows, rollout.texts)]))
        assert torch.equal(grpo, mix)
        flipped = grpo != clean
        assert torch.equal(grpo[flipped], 1.0 - clean[flipped])
        patterns.add(tuple(flipped.tolist()))
    assert len(patterns) >= 3  # the flips change from step to step (P(no flip among 6) = 0.55^6 ~ 3%)
