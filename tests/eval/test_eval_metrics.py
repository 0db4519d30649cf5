"""pass@k, avg@k and summarize against math.comb and hand-computed tables."""

import math
from fractions import Fraction

import pytest

from bridgerl.eval.metrics import avg_at_k, pass_at_k, summarize


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)


def test_pass_at_k_matches_math_comb_for_all_small_cases():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                ref = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(ref, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_for_large_n():
    n, c, k = 1000, 7, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-9)


def test_pass_at_k_edges():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # any 5 of 10 include one of the 6 correct


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, -1, 1), (4, 1, 0), (4, 1, 5)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_avg_at_k_is_mean_of_per_problem_means():
    assert avg_at_k([[1, 0, 0, 0], [1, 1]]) == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(ValueError):
        avg_at_k([])


def test_summarize_hand_computed():
    out = summarize([[1, 0, 0, 0], [1, 1, 0, 0]], ks=(1, 2, 4, 8))
    # pass@2: problem 1: 1 - C(3,2)/C(4,2) = 1/2; problem 2: 1 - C(2,2)/C(4,2) = 5/6
    expected = {"pass@1": 3 / 8, "avg@4": 3 / 8, "pass@2": (0.5 + 5 / 6) / 2, "pass@4": 1.0}
    assert out == pytest.approx(expected)


def test_summarize_pass_at_k_grows_with_k():
    out = summarize([[1, 0, 0, 0, 0, 0, 0, 0], [0] * 8, [1, 1, 0, 0, 0, 0, 0, 0]], ks=(1, 2, 4, 8))
    values = [out["pass@1"], out["pass@2"], out["pass@4"], out["pass@8"]]
    assert values == sorted(values) and values[0] < values[-1]


def test_summarize_rejects_ragged_or_empty_input():
    with pytest.raises(ValueError):
        summarize([[1, 0], [1]], ks=(1,))
    with pytest.raises(ValueError):
        summarize([], ks=(1,))
