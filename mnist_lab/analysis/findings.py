"""What seeds say about a difference: its size, its interval, and whether the seeds resolve it.

The statistics of the seed-replicated report (``replicates``) and of ``lab_check``, on plain
numbers (no pandas, no Lightning):

- ``welch``: the difference of two means with its 95 % Welch–Satterthwaite interval and Welch's
  two-sided p. A side with std 0 is a known number (a lab's): the test is then the one-sample
  t-test of the other side against it.
- ``holm``: p-values adjusted across a grid's comparisons by Holm's step-down method
  (statsmodels), so that the chance of calling any equal pair different stays under ALPHA.
- ``verdict``: "better", "worse", or "not resolved by n seeds": a Holm p at or above ALPHA is
  no evidence of equality, only of too few seeds for a difference of this size.
- ``detectable_difference`` and ``seeds_needed``: the smallest difference that this many seeds
  find 4 times in 5 (80 % power, two-sided ALPHA, statsmodels' TTestIndPower), and the seeds a
  given difference would take.
- ``shape``: median, range and the Shapiro–Wilk p of a point's seeds; ``bootstrap_difference``:
  a percentile bootstrap interval of the difference of means (scipy), for the points whose seeds
  are far from normal (Shapiro–Wilk p < ALPHA), where a t-interval misleads.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

CONFIDENCE = 0.95
ALPHA = 0.05  # Holm-adjusted p below this: the difference is resolved; Shapiro–Wilk p below it: far from normal
POWER = 0.80  # "detectable": found by the test 4 times in 5
BOOTSTRAP_RESAMPLES = 9999


def finite(values) -> np.ndarray:
    """The finite numbers of ``values`` (None, NaN and inf dropped) as a float array."""
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def welch(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> dict[str, float]:
    """``diff`` = mean_a - mean_b, its 95 % Welch–Satterthwaite interval (``ci_low``, ``ci_high``)
    and Welch's two-sided ``p``; all NaN if a side has under two values."""
    if n_a < 2 or n_b < 2 or math.isnan(std_a) or math.isnan(std_b):
        return {"diff": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p": math.nan}
    diff = mean_a - mean_b
    var_a, var_b = std_a**2 / n_a, std_b**2 / n_b
    if var_a + var_b == 0:  # every seed gave the same number on both sides: nothing is uncertain
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "p": 1.0 if diff == 0 else 0.0}
    df = (var_a + var_b) ** 2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))  # Welch–Satterthwaite
    se = math.sqrt(var_a + var_b)
    half = stats.t.ppf((1 + CONFIDENCE) / 2, df) * se
    p = 2 * stats.t.sf(abs(diff) / se, df)
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p": float(p)}


def welch_of(a, b) -> dict[str, float]:
    """``welch`` of two lists of per-seed values (non-finite values dropped)."""
    a, b = finite(a), finite(b)
    return welch(*_stats(a), *_stats(b))


def _stats(x: np.ndarray) -> tuple[float, float, int]:
    return (x.mean() if len(x) else math.nan), (x.std(ddof=1) if len(x) > 1 else math.nan), len(x)


def holm(ps) -> list[float]:
    """Holm-adjusted p-values of a family of comparisons; NaN (no test) stays NaN and does not count."""
    ps = [float(p) for p in ps]
    tested = [i for i, p in enumerate(ps) if not math.isnan(p)]
    adjusted = list(ps)
    if tested:
        for i, p in zip(tested, multipletests([ps[i] for i in tested], alpha=ALPHA, method="holm")[1], strict=True):
            adjusted[i] = float(p)
    return adjusted


def seeds_text(n_a: int, n_b: int) -> str:
    return f"{n_a} seeds" if n_a == n_b else f"{n_a} and {n_b} seeds"


def verdict(diff: float, p_holm: float, n_a: int, n_b: int) -> str:
    """ "better" or "worse" (side a against side b) when the Holm-adjusted p is below ALPHA, else
    "not resolved by n seeds"; "n < 2: no test" when there was no test."""
    if math.isnan(p_holm):
        return "n < 2: no test"
    if p_holm < ALPHA:
        return "better" if diff > 0 else "worse"
    return f"not resolved by {seeds_text(n_a, n_b)}"


def detectable_difference(std: float, n: int) -> float:
    """The smallest difference of means that Welch's test (two-sided ALPHA, n seeds on each side,
    both sides with this std) finds with POWER: Cohen's d from statsmodels, times std."""
    if n < 2 or not std > 0:
        return math.nan
    d = TTestIndPower().solve_power(effect_size=None, nobs1=n, alpha=ALPHA, power=POWER, ratio=1.0)
    return float(d) * std


def seeds_needed(difference: float, std: float) -> int:
    """Seeds per point for Welch's test to find ``difference`` with POWER at this std."""
    if not (difference > 0 and std > 0):
        raise ValueError(f"a difference to resolve must be above 0 (got {difference}), and the seeds must vary")
    analysis, d = TTestIndPower(), difference / std
    if analysis.power(effect_size=d, nobs1=2, alpha=ALPHA, ratio=1.0) >= POWER:  # the solver fails this far out
        return 2
    n = analysis.solve_power(effect_size=d, nobs1=None, alpha=ALPHA, power=POWER, ratio=1.0)
    return math.ceil(float(np.asarray(n).item()) - 1e-9)


def shape(values) -> dict[str, float]:
    """Distribution-free numbers of one point's seeds: median, min, max; and ``shapiro_p``, the
    Shapiro–Wilk test's p that the values come from a normal distribution (NaN under 3 values or
    when all are equal)."""
    x = finite(values)
    if not len(x):
        return {"median": math.nan, "min": math.nan, "max": math.nan, "shapiro_p": math.nan}
    p = float(stats.shapiro(x).pvalue) if len(x) >= 3 and np.ptp(x) > 0 else math.nan
    return {"median": float(np.median(x)), "min": float(x.min()), "max": float(x.max()), "shapiro_p": p}


def far_from_normal(shapiro_p: float) -> bool:
    return shapiro_p < ALPHA  # NaN (no test) is False


def bootstrap_difference(a, b) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of mean(a) - mean(b), each side resampled on its own
    (scipy.stats.bootstrap, seeded so the report is the same each time); ``b`` may be one number
    (a lab's). NaN when a side has under two values or nothing varies."""
    a = finite(a)
    b = finite(np.atleast_1d(b))
    if len(a) < 2 or not len(b) or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return math.nan, math.nan
    rng = np.random.default_rng(0)
    kwargs = {"n_resamples": BOOTSTRAP_RESAMPLES, "confidence_level": CONFIDENCE, "method": "percentile", "rng": rng}
    if len(b) == 1:  # a known number: only our seeds vary
        result = stats.bootstrap((a,), np.mean, **kwargs).confidence_interval
        return float(result.low - b[0]), float(result.high - b[0])
    result = stats.bootstrap((a, b), _mean_difference, **kwargs).confidence_interval
    return float(result.low), float(result.high)


def _mean_difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)
