"""The intervals and tests behind an evaluation's figures: against published values and SciPy."""

from __future__ import annotations

import math
import random

import pytest
import scipy.stats

from textguard.stats import EXACT_MCNEMAR_MAX, mcnemar, mean_interval, paired_difference, percent, wilson


@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (1, 10), (7, 1000), (500, 1000), (1000, 1000), (3, 40)])
def test_wilson_matches_scipy(successes: int, trials: int) -> None:
    interval = wilson(successes, trials)
    expected = scipy.stats.binomtest(successes, trials).proportion_ci(method="wilson")
    assert interval.estimate == successes / trials
    assert math.isclose(interval.low, expected.low, abs_tol=1e-12)
    assert math.isclose(interval.high, expected.high, abs_tol=1e-12)


def test_wilson_known_values_and_an_empty_sample() -> None:
    assert round(wilson(0, 10).high, 4) == 0.2775  # Wilson (1927), the textbook zero-count case
    assert wilson(0, 0).to_dict() == {"estimate": 0.0, "low": 0.0, "high": 1.0}  # nothing known


@pytest.mark.parametrize(("only_first", "only_second"), [(12, 2), (0, 0), (0, 9), (300, 260), (5000, 4700)])
def test_mcnemar_exact_matches_scipy_binomial_test(only_first: int, only_second: int) -> None:
    p_value, test = mcnemar(only_first, only_second)
    discordant = only_first + only_second
    expected = scipy.stats.binomtest(only_first, discordant, 0.5).pvalue if discordant else 1.0
    assert test == "exact" and math.isclose(p_value, expected, rel_tol=1e-9, abs_tol=1e-15)


def test_mcnemar_beyond_the_exact_range_is_chi_squared_with_continuity_correction() -> None:
    b, c = EXACT_MCNEMAR_MAX, EXACT_MCNEMAR_MAX // 2
    p_value, test = mcnemar(b, c)
    statistic = (abs(b - c) - 1) ** 2 / (b + c)
    assert test == "chi2" and math.isclose(p_value, scipy.stats.chi2.sf(statistic, 1), rel_tol=1e-9)


def test_newcombe_paired_interval_on_the_published_example() -> None:
    """Newcombe (1998, Stat Med 17:2635), method 10, on the table 36 / 12 / 2 / 0: the
    difference 0.2 lies within (0.0569, 0.3404)."""
    first = [True] * 36 + [True] * 12 + [False] * 2
    second = [True] * 36 + [False] * 12 + [True] * 2
    result = paired_difference(first, second)
    assert round(result.difference.estimate, 4) == 0.2
    assert (round(result.difference.low, 4), round(result.difference.high, 4)) == (0.0569, 0.3404)
    assert (result.only_first, result.only_second) == (12, 2)
    with pytest.raises(ValueError):
        paired_difference(first, second[:-1])


def test_newcombe_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    """Simulated pairs with a known difference (4% vs 2% flagged, correlated): the interval
    holds the true difference in 95% (within simulation error) of 400 samples of 1,000."""
    rng = random.Random(5)
    covered = 0
    for _ in range(400):
        first, second = [], []
        for _ in range(1000):
            u = rng.random()
            first.append(u < 0.04)
            second.append(u < 0.015 or 0.5 < u < 0.505)  # mostly the same answers, and a few others
        interval = paired_difference(first, second).difference
        covered += interval.low <= 0.04 - 0.02 <= interval.high
    assert 0.91 <= covered / 400 <= 0.99


def test_mean_interval_is_the_normal_interval_of_the_mean() -> None:
    values = [0.0] * 90 + [0.5] * 10
    interval = mean_interval(values)
    half = 1.959963984540054 * scipy.stats.sem(values)
    assert math.isclose(interval.estimate, 0.05) and math.isclose(interval.high, 0.05 + half)
    assert math.isclose(interval.low, 0.05 - half)
    assert mean_interval([]).to_dict() == {"estimate": 0.0, "low": 0.0, "high": 1.0}
    assert mean_interval([-0.5, -1.0], bounds=(-1.0, 1.0)).low == -1.0  # clipped to its bounds


def test_small_rates_keep_their_digits() -> None:
    """Three copies in a million answers: neither rounded nor printed away."""
    rate = wilson(3, 1_000_000).to_dict()
    assert rate["estimate"] == 3e-6 and 0 < rate["low"] < 3e-6 < rate["high"] < 1e-5
    assert percent(rate["estimate"]) == "0.0003%" and percent(0.0709) == "7.09%" and percent(0.0) == "0.00%"
    assert percent(-0.0709, signed=True) == "-7.09%" and percent(0.0709, signed=True) == "+7.09%"
