"""Confidence intervals for `bridgerl compare`: a paired bootstrap over seeds and problems.

    bootstrap_mean(d[seeds, problems]) -> Interval(mean, lo, hi, ...)     # one recipe, or a paired difference
    verdict(interval, direction) -> "holds" | "does not hold" | "not distinguishable"

The data of one comparison is a matrix d[s, p]: for a recipe, the grade (1 correct, 0 wrong) of
test problem p in the final evaluation of seed s; for a paired difference, recipe A's grade minus
recipe B's on the same seed and the same problem (`paired`). The estimate is the mean of d. When
per-problem grades are missing, d has one column: each seed's accuracy (or difference).

Choices, stated once:
- Seeds and problems are crossed, not nested: every seed is graded on the same test problems. A
  bootstrap replicate draws seeds with replacement and, independently, problems with replacement,
  and averages d over the drawn seeds x the drawn problems (the same problems in every drawn seed).
  A problem's difficulty is shared by all seeds; drawing problems afresh within each seed would
  average that shared part away and give too narrow an interval. (The two-way bootstrap; it is
  slightly conservative: McCullagh 2000, "Resampling and exchangeable arrays".)
- Paired: a difference is formed per (seed, problem) before resampling, so both recipes always see
  the same drawn seeds and problems.
- Few seeds: a percentile interval over n resampled seeds is too narrow (it uses the variance with
  divisor n, and normal quantiles): with 5 seeds a nominal 95% interval covers about 85%. The tail
  probability is therefore narrowed as in the expanded percentile bootstrap (Hesterberg 2015, "What
  teachers should know about the bootstrap", 4.2): alpha' / 2 = Phi(-sqrt(n / (n - 1)) t_{n-1, 1 - alpha / 2}),
  which for a normal mean gives the t interval's width. The variance of the mean has a seed part
  (estimated from few seeds) and a problem part (from many problems); n - 1 is their Welch-Satterthwaite
  degrees of freedom (rounded down), so a seed part from 5 seeds is widened as a t with 4 degrees of
  freedom and a problem part from 1,000 problems hardly at all. With many seeds, or when problems
  dominate, it is the plain percentile interval. The bootstrap cannot
  reach beyond the values it resamples: with 2 or 3 seeds the interval is about the range of the
  seeds' values, still narrower than the t interval, so a verdict needs 5 or more seeds to mean much.
- Seeded (numpy's default_rng), so a report is reproducible.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

HOLDS, FAILS, UNCLEAR = "holds", "does not hold", "not distinguishable"
N_BOOT = 4000
BAND_BOOT = 1000  # per plotted point: a band is read by eye, and there are hundreds of points per curve
LEVEL = 0.95
TOL = 1e-12  # a bound within TOL of 0 does not exclude 0 (float noise in a mean of equal values)


@dataclass(frozen=True)
class Interval:
    """The mean of d with its bootstrap CI; problems = 1 means per-seed values only (no per-problem data)."""

    mean: float
    lo: float
    hi: float
    seeds: int
    problems: int
    level: float = LEVEL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- quantiles (stdlib only: scipy is not a dependency) ------------------------------------------

def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def t_abs_cdf(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer df >= 1 (the finite sums of Abramowitz & Stegun 26.7.3-4)."""
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2, s = math.cos(theta) ** 2, math.sin(theta)
    if df % 2 == 0:  # sin(theta) (1 + 1/2 c^2 + (1*3)/(2*4) c^4 + ... up to c^(df-2))
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= c2 * (2 * k - 1) / (2 * k)
            total += term
        return min(1.0, s * total)
    if df == 1:
        return 2.0 * theta / math.pi
    # odd df: 2/pi (theta + sin(theta) cos(theta) (1 + 2/3 c^2 + (2*4)/(3*5) c^4 + ... up to c^(df-3)))
    term, total = 1.0, 1.0
    for k in range(1, (df - 1) // 2):
        term *= c2 * (2 * k) / (2 * k + 1)
        total += term
    return min(1.0, 2.0 / math.pi * (theta + s * math.cos(theta) * total))


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p >= 0.5) of Student's t with integer df, by bisection on t_abs_cdf."""
    if not 0.5 <= p < 1.0:
        raise ValueError(f"t_quantile needs 0.5 <= p < 1, got {p}")
    if df > 10_000:  # the finite sum has df / 2 terms; here t and the normal agree to ~1e-4
        return NormalDist().inv_cdf(p)
    target, lo, hi = 2.0 * p - 1.0, 0.0, 1.0
    while t_abs_cdf(hi, df) < target:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_abs_cdf(mid, df) < target else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def expanded_alpha(alpha: float, n: int) -> float:
    """The two-sided tail probability that makes a percentile interval over n units as wide as the
    t interval (Hesterberg's expanded percentile bootstrap); alpha itself for n < 2."""
    if n < 2:
        return alpha
    return 2.0 * normal_cdf(-math.sqrt(n / (n - 1)) * t_quantile(1.0 - alpha / 2, n - 1))


def t_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi): the textbook t interval of a mean (the large-sample reference in the tests)."""
    v = np.asarray(values, dtype=float)
    m = float(v.mean())
    if len(v) < 2:
        return m, m, m
    half = t_quantile(0.5 + level / 2, len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
    return m, m - half, m + half


def effective_n(d: np.ndarray) -> int:
    """1 + the Welch-Satterthwaite degrees of freedom (rounded down) of the mean of d[seeds, problems]:
    its variance is about V_s + V_p, V_s = var(seed means) / seeds (seeds - 1 df) and V_p =
    var(problem means) / problems (problems - 1 df). A matrix without spread counts as many units."""
    n_seeds, n_problems = d.shape
    parts = [(float(np.var(d.mean(axis), ddof=1)) / n, n - 1) for axis, n in ((1, n_seeds), (0, n_problems)) if n > 1]
    total = sum(v for v, _ in parts)
    if total <= 0:
        return max(n_seeds, n_problems)
    return 1 + int(total ** 2 / sum(v ** 2 / df for v, df in parts))


# -- the bootstrap ------------------------------------------------------------------------------

@lru_cache(maxsize=8)
def _counts(n: int, n_boot: int, seed: int, stream: int) -> np.ndarray:
    """[n_boot, n]: how often each of n units is drawn in each replicate (read-only, cached: every
    comparison over the same problems reuses the same draws, which also makes them comparable)."""
    rng = np.random.default_rng([seed, stream, n])
    flat = rng.integers(0, n, size=(n_boot, n)) + (n * np.arange(n_boot))[:, None]
    counts = np.bincount(flat.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
    counts.flags.writeable = False
    return counts


def bootstrap_mean(d: np.ndarray, *, n_boot: int = N_BOOT, level: float = LEVEL, seed: int = 0) -> Interval:
    """The mean of d[seeds, problems] (or d[seeds]) with its crossed, expanded percentile bootstrap CI."""
    d = np.asarray(d, dtype=float)
    d = d[:, None] if d.ndim == 1 else d
    if d.ndim != 2 or d.size == 0 or np.isnan(d).any():
        raise ValueError(f"bootstrap_mean needs a non-empty [seeds, problems] matrix without NaN, got shape {d.shape}")
    n_seeds, n_problems = d.shape
    per_seed = d @ _counts(n_problems, n_boot, seed, 0).T / n_problems  # [seeds, n_boot]: mean over drawn problems
    stats = np.einsum("bs,sb->b", _counts(n_seeds, n_boot, seed, 1), per_seed) / n_seeds  # [n_boot]
    alpha = expanded_alpha(1.0 - level, effective_n(d))
    lo, hi = np.quantile(stats, [alpha / 2, 1.0 - alpha / 2])
    mean = float(d.mean())
    return Interval(mean, min(float(lo), mean), max(float(hi), mean), n_seeds, n_problems, level)


def seed_band(table: np.ndarray, *, n_boot: int = BAND_BOOT, level: float = LEVEL,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per column of table[seeds, x] (NaN = that seed has no value there; every column has one):
    the CI of the mean over the seeds present, by the same expanded bootstrap over seeds (no band
    where one seed is present)."""
    table = np.asarray(table, dtype=float)
    present = ~np.isnan(table)
    mean = np.nanmean(table, axis=0)
    lo, hi = mean.copy(), mean.copy()
    masks, inverse = np.unique(present.T, axis=0, return_inverse=True)
    for k, mask in enumerate(masks):
        cols = np.flatnonzero(inverse.reshape(-1) == k)
        n = int(mask.sum())
        if n < 2:
            continue
        sub = table[np.ix_(mask, cols)]  # [n, cols]
        stats = _counts(n, n_boot, seed, 1) @ sub / n  # [n_boot, cols]
        alpha = expanded_alpha(1.0 - level, n)
        lo[cols], hi[cols] = np.quantile(stats, [alpha / 2, 1.0 - alpha / 2], axis=0)
    return np.minimum(lo, mean), np.maximum(hi, mean)


# -- pairing and verdicts -----------------------------------------------------------------------

def paired(a: dict[int, dict[str, float]], b: dict[int, dict[str, float]] | None = None
           ) -> tuple[np.ndarray, list[int], list[str]]:
    """d[seed, problem] from per-seed {problem id: grade} (A's grade minus B's when b is given), over
    the seeds both have and the problem ids every one of those runs has; (d, seeds, ids)."""
    seeds = sorted(a.keys() & b.keys()) if b is not None else sorted(a)
    runs = [a[s] for s in seeds] + ([b[s] for s in seeds] if b is not None else [])
    ids = sorted(set.intersection(*(set(r) for r in runs))) if runs else []
    mat_a = np.array([[a[s][i] for i in ids] for s in seeds], dtype=float).reshape(len(seeds), len(ids))
    if b is None:
        return mat_a, seeds, ids
    mat_b = np.array([[b[s][i] for i in ids] for s in seeds], dtype=float).reshape(len(seeds), len(ids))
    return mat_a - mat_b, seeds, ids


def verdict(iv: Interval | None, direction: int = 1) -> str:
    """"holds" when the CI excludes 0 on the claimed side (direction +1: above 0, -1: below),
    "does not hold" when it excludes 0 on the other side, else "not distinguishable"."""
    if iv is None:
        return UNCLEAR
    above, below = iv.lo > TOL, iv.hi < -TOL
    if (above and direction > 0) or (below and direction < 0):
        return HOLDS
    return FAILS if above or below else UNCLEAR


def equivalence(iv: Interval | None, margin: float) -> str:
    """For a claim of no difference: "holds" when the whole CI lies within +-margin, "does not hold"
    when it excludes 0, else "not distinguishable"."""
    if iv is None:
        return UNCLEAR
    if iv.lo > TOL or iv.hi < -TOL:
        return FAILS
    return HOLDS if -margin <= iv.lo and iv.hi <= margin else UNCLEAR


def combine(verdicts: list[str]) -> str:
    """A claim made of several comparisons holds when every one holds; it fails when any fails."""
    if not verdicts:
        return UNCLEAR
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else UNCLEAR
