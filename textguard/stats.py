"""Confidence intervals and tests for evaluation figures a compliance team must defend.

- `wilson`: the Wilson score interval of a proportion (good at rates near 0, where copying
  rates live, unlike the Wald interval, which collapses to [0, 0] there).
- `mean_interval`: a mean with its normal-approximation interval (scans hold hundreds of
  answers or more, where the central limit theorem serves).
- `paired_difference`: two rates measured on the same answers (model A and model B on the same
  prompts): the difference with Newcombe's interval for paired proportions (1998, method 10),
  and McNemar's test (exact binomial up to `EXACT_MCNEMAR_MAX` discordant pairs, chi-squared
  with continuity correction beyond).

Pure Python: the figures are small sums, and SciPy is not needed at run time (the tests compare
with it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EXACT_MCNEMAR_MAX", "Z95", "Interval", "PairedDifference", "mcnemar", "mean_interval",
           "paired_difference", "percent", "wilson"]

Z95 = 1.959963984540054  # the normal quantile of 0.975
EXACT_MCNEMAR_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate and its 95% confidence interval."""

    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        """Four significant figures: a rate of 3 in a million must not round to nothing."""
        return {"estimate": _significant(self.estimate), "low": _significant(self.low),
                "high": _significant(self.high)}


def _significant(value: float) -> float:
    return float(f"{value:.4g}")


def percent(share: float, signed: bool = False) -> str:
    """A share as a percentage, with the digits a small one needs (0.0003%, not 0.00%)."""
    digits = 2 if share == 0 or abs(share) >= 0.001 else 4
    return f"{share:{'+' if signed else ''}.{digits}%}"


def wilson(successes: int, trials: int, z: float = Z95) -> Interval:
    """The share `successes / trials` with its Wilson score interval ([0, 1] for no trials)."""
    if trials <= 0:
        return Interval(0.0, 0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: Sequence[float], z: float = Z95, bounds: tuple[float, float] = (0.0, 1.0)) -> Interval:
    """The mean of `values` with its normal-approximation interval, clipped to `bounds`."""
    n = len(values)
    if n == 0:
        return Interval(0.0, *bounds)
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, *bounds)
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = z * math.sqrt(variance / n)
    return Interval(mean, max(bounds[0], mean - half), min(bounds[1], mean + half))


def mcnemar(only_first: int, only_second: int) -> tuple[float, str]:
    """McNemar's two-sided p-value for the discordant pairs (first yes and second no, and the
    reverse), and which test gave it ("exact" or "chi2")."""
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0, "exact"
    if discordant <= EXACT_MCNEMAR_MAX:
        smaller = min(only_first, only_second)
        log_half = discordant * math.log(0.5)
        tail = math.fsum(math.exp(_log_comb(discordant, k) + log_half) for k in range(smaller + 1))
        return min(1.0, 2 * tail), "exact"
    statistic = max(0, abs(only_first - only_second) - 1) ** 2 / discordant
    return math.erfc(math.sqrt(statistic / 2)), "chi2"


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """Two rates on the same answers: each with its interval, their difference (first minus
    second) with Newcombe's interval, and McNemar's test of "no difference"."""

    first: Interval
    second: Interval
    difference: Interval
    only_first: int  # pairs where the first is yes and the second no
    only_second: int
    p_value: float
    test: str

    def to_dict(self) -> dict[str, Any]:
        return {"run": self.first.to_dict(), "baseline": self.second.to_dict(),
                "difference": self.difference.to_dict(), "only_run": self.only_first,
                "only_baseline": self.only_second, "p_value": float(f"{self.p_value:.4g}"), "test": self.test}


def paired_difference(first: Sequence[bool], second: Sequence[bool]) -> PairedDifference:
    """Compare two yes/no outcomes over the same answers (`first[i]` and `second[i]` of one answer)."""
    if len(first) != len(second):
        raise ValueError("paired outcomes must be of equal length")
    n = len(first)
    both = sum(1 for a, b in zip(first, second, strict=True) if a and b)
    only_first = sum(1 for a, b in zip(first, second, strict=True) if a and not b)
    only_second = sum(1 for a, b in zip(first, second, strict=True) if b and not a)
    neither = n - both - only_first - only_second
    one, two = wilson(both + only_first, n), wilson(both + only_second, n)
    p_value, test = mcnemar(only_first, only_second)
    return PairedDifference(one, two, _newcombe(one, two, both, only_first, only_second, neither),
                            only_first, only_second, p_value, test)


def _newcombe(one: Interval, two: Interval, both: int, only_one: int, only_two: int, neither: int) -> Interval:
    """Newcombe's method 10: the Wilson intervals of the two rates, combined with the
    correlation of the pairs, phi, its numerator corrected for continuity (less n/2 when
    positive, no less than 0), phi taken as 0 where a margin is empty."""
    delta = one.estimate - two.estimate
    n = both + only_one + only_two + neither
    margins = (both + only_one) * (only_two + neither) * (both + only_two) * (only_one + neither)
    numerator = float(both * neither - only_one * only_two)
    if numerator > 0:
        numerator = max(0.0, numerator - n / 2)
    phi = numerator / math.sqrt(margins) if margins else 0.0
    d1, u1 = one.estimate - one.low, one.high - one.estimate
    d2, u2 = two.estimate - two.low, two.high - two.estimate
    low = delta - math.sqrt(max(0.0, d1 * d1 - 2 * phi * d1 * u2 + u2 * u2))
    high = delta + math.sqrt(max(0.0, u1 * u1 - 2 * phi * u1 * d2 + d2 * d2))
    return Interval(delta, max(-1.0, low), min(1.0, high))
