"""stats: the paired bootstrap over seeds and problems, its small-sample widening, and the verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridgerl.report.stats import (FAILS, HOLDS, UNCLEAR, Interval, bootstrap_mean, combine, effective_n,
                                   equivalence, expanded_alpha, paired, seed_band, t_interval, t_quantile, verdict)


# -- hand-checkable cases -----------------------------------------------------------------------

def test_a_constant_difference_has_a_zero_width_interval() -> None:
    iv = bootstrap_mean(np.full((5, 200), 0.25))
    assert iv.mean == pytest.approx(0.25) and iv.lo == pytest.approx(0.25) and iv.hi == pytest.approx(0.25)
    assert (iv.seeds, iv.problems) == (5, 200) and verdict(iv) == HOLDS
    zero = bootstrap_mean(np.zeros((5, 200)))
    assert (zero.lo, zero.hi) == (0.0, 0.0) and verdict(zero) == UNCLEAR  # a zero-width CI at 0 excludes nothing


def test_pairing_cancels_what_both_recipes_share() -> None:
    """Seeds that move both recipes alike (and problems hard for both) drop out of a paired difference."""
    rng = np.random.default_rng(0)
    seed_skill = rng.uniform(0.1, 0.9, size=5)[:, None]
    a = (rng.random((5, 300)) < seed_skill).astype(float)
    b = a.copy()
    b[:, :30] = 0.0  # b misses the first 30 problems, a solves whatever its seed solves there
    a[:, :30] = 1.0
    grades_a = {s: {f"p{i}": a[s, i] for i in range(300)} for s in range(5)}
    grades_b = {s: {f"p{i}": b[s, i] for i in reversed(range(300))} for s in range(5)}  # other order: aligned by id
    d, seeds, ids = paired(grades_a, grades_b)
    iv = bootstrap_mean(d)
    alone = bootstrap_mean(a)
    assert iv.mean == pytest.approx(0.1)
    assert iv.hi - iv.lo < 0.3 * (alone.hi - alone.lo)  # the seed spread of a alone is wide; the paired one is not
    assert verdict(iv) == HOLDS
    # unpaired (b's seeds in another order) the same data cannot separate the two
    d_unpaired = a - b[[4, 3, 2, 1, 0]]
    assert verdict(bootstrap_mean(d_unpaired)) == UNCLEAR


def test_paired_aligns_on_common_seeds_and_problem_ids() -> None:
    a = {0: {"x": 1.0, "y": 0.0, "z": 1.0}, 1: {"y": 1.0, "x": 1.0, "z": 0.0}, 2: {"x": 0.0, "y": 0.0, "z": 0.0}}
    b = {1: {"x": 0.0, "y": 1.0}, 0: {"y": 1.0, "x": 0.0, "w": 1.0}}
    d, seeds, ids = paired(a, b)
    assert seeds == [0, 1] and ids == ["x", "y"]  # seed 2 and problems z, w are not in every run
    np.testing.assert_array_equal(d, [[1.0, -1.0], [1.0, 0.0]])
    alone, seeds, ids = paired(a)
    assert seeds == [0, 1, 2] and ids == ["x", "y", "z"] and alone.shape == (3, 3)


def test_the_bootstrap_is_seeded() -> None:
    d = np.random.default_rng(1).normal(size=(6, 50))
    assert bootstrap_mean(d, seed=3) == bootstrap_mean(d, seed=3)
    assert bootstrap_mean(d, seed=3) != bootstrap_mean(d, seed=4)


def test_verdicts_follow_the_sign_the_ci_excludes() -> None:
    up, down, across = Interval(0.1, 0.05, 0.15, 5, 100), Interval(-0.1, -0.15, -0.05, 5, 100), \
        Interval(0.02, -0.01, 0.05, 5, 100)
    assert verdict(up, +1) == HOLDS and verdict(up, -1) == FAILS
    assert verdict(down, -1) == HOLDS and verdict(down, +1) == FAILS
    assert verdict(across, +1) == UNCLEAR and verdict(across, -1) == UNCLEAR and verdict(None) == UNCLEAR
    assert verdict(Interval(0.0, 0.0, 0.04, 5, 100)) == UNCLEAR  # touching 0 does not exclude it
    assert equivalence(Interval(0.0, -0.03, 0.04, 5, 100), 0.05) == HOLDS
    assert equivalence(Interval(0.0, -0.08, 0.04, 5, 100), 0.05) == UNCLEAR
    assert equivalence(Interval(0.03, 0.01, 0.05, 5, 100), 0.05) == FAILS  # excludes 0: depends on it
    assert combine([HOLDS, HOLDS]) == HOLDS and combine([HOLDS, UNCLEAR]) == UNCLEAR
    assert combine([HOLDS, FAILS, UNCLEAR]) == FAILS and combine([]) == UNCLEAR


# -- against a second implementation ------------------------------------------------------------

def test_t_quantile_matches_tables_and_scipy() -> None:
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)  # printed t tables
    assert t_quantile(0.975, 4) == pytest.approx(2.7764, abs=1e-4)
    assert t_quantile(0.95, 10) == pytest.approx(1.8125, abs=1e-4)
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 7, 12, 29, 100, 999):
        for p in (0.6, 0.9, 0.975, 0.999):
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-8)


def test_expanded_alpha_by_hand() -> None:
    # n = 5: 2 Phi(-sqrt(5/4) * 2.7764) = 2 Phi(-3.1042) = 0.00191
    assert expanded_alpha(0.05, 5) == pytest.approx(2 * 0.5 * math.erfc(math.sqrt(1.25) * 2.776445 / math.sqrt(2)))
    assert expanded_alpha(0.05, 5) == pytest.approx(0.00191, abs=1e-5)
    assert expanded_alpha(0.05, 1) == 0.05
    assert 0.049 < expanded_alpha(0.05, 2000) < 0.05  # many units: the plain percentile interval


def test_seeds_only_interval_matches_the_t_interval_for_many_seeds() -> None:
    x = np.random.default_rng(2).normal(0.3, 0.1, size=400)
    iv = bootstrap_mean(x)
    m, lo, hi = t_interval(x)
    assert iv.mean == pytest.approx(m)
    assert iv.lo == pytest.approx(lo, abs=0.08 * (hi - lo)) and iv.hi == pytest.approx(hi, abs=0.08 * (hi - lo))


def test_few_seeds_widen_the_interval_towards_the_t_interval() -> None:
    x = np.array([0.42, 0.55, 0.49, 0.61, 0.38])
    widened = bootstrap_mean(x)
    plain = np.quantile(np.random.default_rng(0).choice(x, size=(4000, 5)).mean(1), [0.025, 0.975])
    _, lo, hi = t_interval(x)
    assert widened.hi - widened.lo > 1.3 * (plain[1] - plain[0])
    assert widened.hi - widened.lo > 0.75 * (hi - lo)


def test_the_widening_follows_the_part_of_the_variance_that_few_seeds_estimate() -> None:
    rng = np.random.default_rng(5)
    problems = rng.normal(0.0, 1.0, size=(1, 1000))
    assert effective_n(np.array([[0.1], [0.3], [0.2], [0.6], [0.4]])) == 5  # seeds only: n = seeds
    assert effective_n(np.full((5, 10), 0.3)) == 10  # no spread at all
    # 5 seeds that agree: the spread is the problems', estimated from 1,000 of them, so no widening
    agree = problems + rng.normal(0.0, 0.01, size=(5, 1000))
    assert effective_n(agree) > 500
    iv = bootstrap_mean(agree)
    se = float(agree.mean(0).std(ddof=1)) / math.sqrt(1000)
    assert (iv.hi - iv.lo) / 2 == pytest.approx(1.96 * se, rel=0.1)
    # 5 seeds that disagree far more than the problems do: widened like a t with 4 degrees of freedom
    disagree = 0.01 * problems + rng.normal(0.0, 1.0, size=(5, 1))
    assert effective_n(disagree) == 5
    _, lo, hi = t_interval(disagree.mean(1))
    assert bootstrap_mean(disagree).hi - bootstrap_mean(disagree).lo > 0.75 * (hi - lo)


def test_crossed_bootstrap_matches_the_normal_approximation_with_seed_and_problem_effects() -> None:
    """d = seed effect + problem effect + noise: the CI must carry both parts. A bootstrap over seeds
    only, or one that draws problems afresh within every seed, misses most of the problem part here."""
    rng = np.random.default_rng(3)
    n_seeds, n_problems = 40, 400
    d = 0.1 + rng.normal(0, 0.05, (n_seeds, 1)) + rng.normal(0, 0.3, (1, n_problems)) + \
        rng.normal(0, 0.3, (n_seeds, n_problems))
    se = math.sqrt(d.mean(1).var(ddof=1) / n_seeds + d.mean(0).var(ddof=1) / n_problems)
    iv = bootstrap_mean(d)
    assert (iv.hi - iv.lo) / 2 == pytest.approx(1.96 * se, rel=0.12)
    assert iv.lo < 0.1 < iv.hi
    seeds_only = bootstrap_mean(d.mean(1))
    assert (seeds_only.hi - seeds_only.lo) < 0.7 * (iv.hi - iv.lo)


# -- bands ----------------------------------------------------------------------------------------

def test_seed_band_is_the_bootstrap_ci_per_x_and_absent_where_one_seed_is_present() -> None:
    table = np.array([[0.2, 0.1, np.nan], [0.4, 0.3, np.nan], [np.nan, 0.5, 0.7]])
    lo, hi = seed_band(table)
    assert (lo[0], hi[0]) == pytest.approx((0.2, 0.4))  # two seeds: the bootstrap's range of their means
    assert (lo[2], hi[2]) == (0.7, 0.7)  # one seed: no band
    assert lo[1] >= 0.1 - 1e-12 and hi[1] <= 0.5 + 1e-12 and lo[1] < 0.3 < hi[1]
    many = np.random.default_rng(4).normal(0.5, 0.1, size=(200, 3))
    lo, hi = seed_band(many)
    for j in range(3):
        _, t_lo, t_hi = t_interval(many[:, j])
        assert (lo[j], hi[j]) == pytest.approx((t_lo, t_hi), abs=0.1 * (t_hi - t_lo))
