"""Sample-based accuracy metrics: pass@1, avg@n, unbiased pass@k.

Input convention: `correct[i][j]` is the grade of sample j of problem i, 1.0 correct, 0.0
wrong. avg@n and pass@1 average the grades as given; pass@k counts a sample as correct
when its grade is > 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i) (Chen et al. 2021, the Codex paper): the
    binomials overflow floats for n in the hundreds, the product never does.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:  # every draw of k samples contains a correct one
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def avg_at_k(correct_matrix: Sequence[Sequence[float]]) -> float:
    """Mean over problems of the mean grade over that problem's samples (avg@k, k = samples)."""
    if len(correct_matrix) == 0:
        raise ValueError("no problems")
    if any(len(row) == 0 for row in correct_matrix):
        raise ValueError("every problem needs at least one sample")
    return sum(sum(row) / len(row) for row in correct_matrix) / len(correct_matrix)


def summarize(correct: Sequence[Sequence[float]], ks: Sequence[int] = (1,)) -> dict[str, float]:
    """{"pass@1", f"avg@{n}", f"pass@{k}" for each k in ks with k <= n}.

    correct: [problems][n] grades, the same n for every problem. pass@1 is the mean grade over
    all samples (for n = 1 and greedy decoding, plain accuracy); avg@n is the same number
    under the name papers use for small sets (AIME avg@8); pass@k (k > 1) is the mean over
    problems of the unbiased estimator. k larger than n is skipped, not extrapolated.
    """
    if len(correct) == 0:
        raise ValueError("no problems")
    n = len(correct[0])
    if n == 0 or any(len(row) != n for row in correct):
        raise ValueError("every problem needs the same, non-zero number of samples")
    avg = avg_at_k(correct)
    out = {"pass@1": avg, f"avg@{n}": avg}
    for k in sorted(set(ks)):
        if k == 1 or k > n:
            continue
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        per_problem = [pass_at_k(n, sum(1 for x in row if x > 0.5), k) for row in correct]
        out[f"pass@{k}"] = sum(per_problem) / len(per_problem)
    return out
