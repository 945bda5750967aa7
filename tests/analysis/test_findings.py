"""``mnist_lab.analysis.findings`` against numbers found elsewhere: Holm's method on a textbook example,
the power of a t-test from Cohen's table and from the noncentral t distribution, Welch's interval
against scipy's own on the raw values, and the bootstrap against a resampling written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from mnist_lab.analysis import findings


def power_by_hand(d: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test, n per side, effect d (in stds), from the
    noncentral t distribution (the textbook formula; no statsmodels)."""
    df, nc = 2 * n - 2, d * math.sqrt(n / 2)
    t = stats.t.ppf(1 - alpha / 2, df)
    return stats.nct.sf(t, df, nc) + np.nan_to_num(stats.nct.cdf(-t, df, nc))  # the far tail: 0 where scipy gives NaN


def test_holm_adjusts_the_textbook_example():
    # p = 0.01, 0.04, 0.03, 0.005: sorted, times 4, 3, 2, 1, then never below an earlier one.
    adjusted = findings.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_leaves_out_the_comparisons_without_a_test():
    assert findings.holm([0.01, math.nan, 0.04]) == pytest.approx([0.02, math.nan, 0.04], nan_ok=True)
    assert findings.holm([]) == []


def test_the_seeds_a_difference_takes_match_cohens_table():
    # Cohen (1988), Table 2.4.1: two-sided alpha 0.05, power 0.80: d 0.5 needs 64 per group, d 0.8 needs 26.
    assert findings.seeds_needed(0.5, 1.0) == 64
    assert findings.seeds_needed(0.008, 0.01) == 26
    # and the seeds it takes are the fewest whose power, by the noncentral t, reaches 80 %
    n = findings.seeds_needed(0.001, 0.0012)
    assert power_by_hand(0.001 / 0.0012, n) >= 0.80 > power_by_hand(0.001 / 0.0012, n - 1)
    assert findings.seeds_needed(0.1, 0.001) == 2  # 100 stds apart: two seeds each tell


def test_the_detectable_difference_has_80_percent_power():
    for n in (3, 5, 10):
        std = 0.0012
        detectable = findings.detectable_difference(std, n)
        assert power_by_hand(detectable / std, n) == pytest.approx(0.80, abs=1e-6)
        d = optimize.brentq(lambda d, n=n: power_by_hand(d, n) - 0.80, 0.1, 6)  # solved here
        assert detectable == pytest.approx(d * std, rel=1e-5)
    assert math.isnan(findings.detectable_difference(0.0, 5))  # seeds that never vary resolve nothing


def test_welch_matches_scipys_interval_and_p_on_the_raw_values():
    a, b = [0.9698, 0.9711, 0.9689, 0.9730, 0.9702], [0.9751, 0.9742, 0.9760, 0.9748, 0.9749, 0.9755]
    scipy_test = stats.ttest_ind(a, b, equal_var=False)
    low, high = scipy_test.confidence_interval(0.95)
    found = findings.welch_of(a, b)
    assert found["diff"] == pytest.approx(np.mean(a) - np.mean(b), rel=1e-12)
    assert [found["ci_low"], found["ci_high"], found["p"]] == pytest.approx([low, high, scipy_test.pvalue], rel=1e-9)


def test_a_number_without_spread_is_the_one_sample_t_test():
    ours, lab = [0.9735, 0.9751, 0.9748, 0.9760, 0.9754], 0.9772
    one_sample = stats.ttest_1samp(ours, lab)
    low, high = one_sample.confidence_interval(0.95)
    found = findings.welch(np.mean(ours), np.std(ours, ddof=1), len(ours), lab, 0.0, 2)
    assert [found["ci_low"], found["ci_high"], found["p"]] == pytest.approx([low - lab, high - lab, one_sample.pvalue])


def test_welch_without_two_values_or_without_spread():
    assert math.isnan(findings.welch_of([0.9], [0.8, 0.7])["p"])
    assert findings.welch_of([0.9, 0.9], [0.9, 0.9])["p"] == 1.0
    same = findings.welch_of([0.9, 0.9], [0.8, 0.8])
    assert same["p"] == 0.0 and same["ci_low"] == same["ci_high"] == pytest.approx(0.1)


def test_the_verdict_says_resolved_or_not_never_equal():
    assert findings.verdict(-0.0078, 0.001, 5, 5) == "worse"
    assert findings.verdict(0.002, 0.01, 5, 5) == "better"
    assert findings.verdict(-0.0015, 0.2, 5, 5) == "not resolved by 5 seeds"
    assert findings.verdict(-0.0015, 0.2, 3, 5) == "not resolved by 3 and 5 seeds"
    assert findings.verdict(math.nan, math.nan, 1, 5) == "n < 2: no test"


def test_shapiro_wilk_tells_a_collapsed_seed_from_a_spread():
    # Shapiro-Wilk of 1, 2, 3, 4, 5: W = 0.987, p = 0.967 (an evenly spaced sample is as normal as 5 get)
    even = findings.shape([0.91, 0.92, 0.93, 0.94, 0.95])
    assert even["shapiro_p"] == pytest.approx(0.967, abs=0.001) and not findings.far_from_normal(even["shapiro_p"])
    collapsed = findings.shape([0.97, 0.972, 0.971, 0.10, 0.973])  # one seed collapsed to chance
    assert findings.far_from_normal(collapsed["shapiro_p"])
    assert (collapsed["median"], collapsed["min"], collapsed["max"]) == (0.971, 0.10, 0.973)
    assert math.isnan(findings.shape([0.9, 0.8])["shapiro_p"])  # under 3 values: no test


def test_the_bootstrap_interval_matches_a_resampling_by_hand():
    a, b = [0.10, 0.12, 0.45, 0.47, 0.50], [0.970, 0.975, 0.973, 0.974, 0.972]
    rng = np.random.default_rng(1)
    means_a = rng.choice(a, (200_000, len(a))).mean(axis=1)
    means_b = rng.choice(b, (200_000, len(b))).mean(axis=1)
    expected = np.percentile(means_a - means_b, [2.5, 97.5])
    low, high = findings.bootstrap_difference(a, b)
    assert [low, high] == pytest.approx(expected, abs=0.01)  # two resamplings agree to their own noise
    low_1, high_1 = findings.bootstrap_difference(a, 0.97)  # a lab's number: only ours is resampled
    assert [low_1, high_1] == pytest.approx(np.percentile(means_a, [2.5, 97.5]) - 0.97, abs=0.01)
    assert findings.bootstrap_difference(a, b) == (low, high)  # seeded: the same report every time
