"""Equivalence of two arms run with the same seeds: the two one-sided tests (TOST, Schuirmann 1987) on the
per-seed differences against a margin stated before the runs.

"No significant difference" is not evidence of equality: with few seeds every difference is non-significant.
An equivalence claim needs the opposite test: the 90% t interval of the mean paired difference (the TOST at
alpha = 0.05 on each side) lies inside (-margin, +margin). A margin is either a *difference* (same units as the
metric, e.g. attr_acc +-0.02) or a *ratio* (the test runs on log(b / a), e.g. fd_attr within x1.10 either way).

Verdicts: *equivalent* (90% interval inside the margin), *not equivalent* (90% interval wholly outside it),
*inconclusive at this power* (anything else). ``pairs_needed`` is how many pairs the TOST would need for 80%
power when the arms are truly equal, at the observed SD of the differences: what a rerun should plan for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from dfgan.reports.stats import ALPHA, POWER

EQUIVALENT, NOT_EQUIVALENT, INCONCLUSIVE = "equivalent", "not equivalent", "inconclusive at this power"
KINDS = ("difference", "ratio")
MAX_PAIRS = 100_000  # ``pairs_needed`` gives up above this (no spread: 2; a margin of 0: never)


@dataclass(frozen=True)
class Margin:
    """An equivalence margin: ``difference``: |b - a| < value; ``ratio``: 1/value < b / a < value (value > 1)."""

    kind: str
    value: float

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"margin kind {self.kind!r}: allowed {', '.join(KINDS)}")
        if not (self.value > (1.0 if self.kind == "ratio" else 0.0) and math.isfinite(self.value)):
            raise ValueError(f"a {self.kind} margin must be {'> 1' if self.kind == 'ratio' else '> 0'}, "
                             f"got {self.value}")

    @classmethod
    def parse(cls, text: str) -> Margin:
        """``0.02`` (a difference) or ``x1.10`` (a ratio)."""
        t = text.strip()
        try:
            return cls("ratio", float(t[1:])) if t[:1] in "x×" else cls("difference", float(t))
        except ValueError as e:
            raise ValueError(f"margin {text!r}: expected a difference like 0.02 or a ratio like x1.10 ({e})") from e

    @property
    def bound(self) -> float:
        """The margin on the scale the test runs on (the difference, or log of the ratio)."""
        return math.log(self.value) if self.kind == "ratio" else self.value

    def __str__(self) -> str:
        return f"x{self.value:g}" if self.kind == "ratio" else f"±{self.value:g}"


@dataclass
class Equivalence:
    """b versus a over n paired seeds: the mean difference (on the test's scale) with its 90% and 95% t intervals,
    the TOST p (the larger one-sided p), the verdict and the pairs an 80%-power rerun would need."""

    margin: Margin
    n: int
    diff: float  # mean of b - a, or of log(b / a) for a ratio margin
    lo90: float | None
    hi90: float | None
    lo95: float | None
    hi95: float | None
    p_tost: float | None
    verdict: str
    pairs_needed: int | None
    sd: float | None

    def shown(self, x: float | None) -> float | None:
        """A value on the test's scale as the metric reads it: a difference, or the ratio b / a."""
        return None if x is None else (math.exp(x) if self.margin.kind == "ratio" else x)


def pairs_needed(sd: float, bound: float, alpha: float = ALPHA, power: float = POWER) -> int | None:
    """The smallest n whose TOST (each side at ``alpha``) has ``power`` when the true difference is 0 and the
    differences' SD is ``sd``: P(|mean| + t_{1-alpha, n-1} se < bound) >= power, se = sd / sqrt(n)."""
    if not (math.isfinite(sd) and bound > 0):
        return None
    if sd == 0:
        return 2
    # t quantiles exceed the normal ones, so the normal-theory n is a lower bound to search up from
    z = stats.norm.ppf(1 - alpha) + stats.norm.ppf((1 + power) / 2)
    for n in range(max(2, int((z * sd / bound) ** 2)), MAX_PAIRS + 1):
        se = sd / math.sqrt(n)
        slack = bound / se - stats.t.ppf(1 - alpha, n - 1)
        if slack > 0 and 2 * stats.t.cdf(slack, n - 1) - 1 >= power:
            return n
    return None


def equivalence(a: np.ndarray, b: np.ndarray, margin: Margin, alpha: float = ALPHA) -> Equivalence:
    """TOST of arm b against arm a, paired by position (the same seed at the same index)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired values need the same 1-d shape, got {a.shape} and {b.shape}")
    if margin.kind == "ratio" and (np.any(a <= 0) or np.any(b <= 0)):
        raise ValueError("a ratio margin needs positive values")
    d = np.log(b / a) if margin.kind == "ratio" else b - a
    n, mean = len(d), float(d.mean()) if len(d) else math.nan
    if n < 2:
        return Equivalence(margin, n, mean, None, None, None, None, None, INCONCLUSIVE, None, None)
    sd = float(d.std(ddof=1))
    se = sd / math.sqrt(n)
    m = margin.bound
    if se == 0:  # no spread: the difference is known exactly
        lo90 = hi90 = lo95 = hi95 = mean
        p = 0.0 if abs(mean) < m else 1.0
    else:
        t90, t95 = stats.t.ppf(1 - alpha, n - 1), stats.t.ppf(1 - alpha / 2, n - 1)
        lo90, hi90, lo95, hi95 = mean - t90 * se, mean + t90 * se, mean - t95 * se, mean + t95 * se
        p = float(max(stats.t.sf((mean + m) / se, n - 1), stats.t.cdf((mean - m) / se, n - 1)))
    if -m < lo90 and hi90 < m:
        verdict = EQUIVALENT
    elif hi90 <= -m or lo90 >= m:
        verdict = NOT_EQUIVALENT
    else:
        verdict = INCONCLUSIVE
    return Equivalence(margin, n, mean, lo90, hi90, lo95, hi95, p, verdict, pairs_needed(sd, m, alpha), sd)
