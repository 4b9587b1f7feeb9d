"""The equivalence test (TOST) of paired arms: its size at the margin and its power at ``pairs_needed`` checked by
simulation, its p against scipy's one-sided t-tests, ratio margins on the log scale, and bad margins refused."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from dfgan.reports.equivalence import (
    EQUIVALENT,
    INCONCLUSIVE,
    NOT_EQUIVALENT,
    Margin,
    equivalence,
    pairs_needed,
)

N_STUDIES = 2000


def _rate(rng, n, true_diff, sd, margin):
    a = rng.normal(5.0, 1.0, (N_STUDIES, n))
    b = a + true_diff + rng.normal(0, sd, (N_STUDIES, n))
    return np.mean([equivalence(x, y, margin).verdict == EQUIVALENT for x, y in zip(a, b, strict=True)])


def test_size_at_the_margin_is_alpha():
    """True difference exactly at the margin: 'equivalent' must come out in at most alpha = 5% of studies; about
    that often where the interval is narrow against the margin (the TOST is then exact at the boundary), less
    where it is wide (the other side's test costs power: the TOST is conservative there)."""
    rng = np.random.default_rng(1)
    top = 0.05 + 3 * np.sqrt(0.05 * 0.95 / N_STUDIES)
    assert _rate(rng, 4, true_diff=0.02, sd=0.03, margin=Margin("difference", 0.02)) < top
    assert 0.03 < _rate(rng, 10, true_diff=0.02, sd=0.01, margin=Margin("difference", 0.02)) < top


def test_power_at_pairs_needed():
    """Equal arms, n = pairs_needed: about 80% of studies say 'equivalent'; half as many pairs, far fewer."""
    rng = np.random.default_rng(2)
    sd, margin = 0.03, Margin("difference", 0.02)
    n = pairs_needed(sd, margin.bound)
    assert 10 < n < 40
    assert 0.74 < _rate(rng, n, 0.0, sd, margin) < 0.9
    assert _rate(rng, n // 2, 0.0, sd, margin) < 0.6


def test_p_is_the_larger_one_sided_p_and_the_verdicts():
    a = np.array([0.90, 0.92, 0.88, 0.91, 0.93, 0.89])
    b = a + np.array([0.004, -0.006, 0.002, 0.001, -0.003, 0.005])
    eq = equivalence(a, b, Margin("difference", 0.02))
    d = b - a
    lower = stats.ttest_1samp(d, -0.02, alternative="greater").pvalue
    upper = stats.ttest_1samp(d, 0.02, alternative="less").pvalue
    assert eq.p_tost == pytest.approx(max(lower, upper)) and eq.p_tost < 0.05
    assert eq.verdict == EQUIVALENT and eq.n == 6 and eq.lo95 < eq.lo90 < eq.diff < eq.hi90 < eq.hi95
    far = equivalence(a, a + 0.1 + (d - d.mean()), Margin("difference", 0.02))
    assert far.verdict == NOT_EQUIVALENT
    wide = equivalence(a, a + 10 * d, Margin("difference", 0.02))
    assert wide.verdict == INCONCLUSIVE and wide.pairs_needed > 6
    assert equivalence(a[:1], b[:1], Margin("difference", 0.02)).verdict == INCONCLUSIVE


def test_ratio_margin_runs_on_the_log_scale():
    a = np.array([100.0, 120.0, 90.0, 110.0])
    assert equivalence(a, a * 1.02, Margin.parse("x1.10")).verdict == EQUIVALENT  # no spread: known exactly
    assert equivalence(a, a * 1.2, Margin.parse("x1.10")).verdict == NOT_EQUIVALENT
    jitter = np.array([1.05, 0.97, 1.01, 0.99])
    eq = equivalence(a, a * jitter, Margin.parse("x1.10"))
    assert eq.diff == pytest.approx(np.log(jitter).mean()) and eq.shown(eq.diff) == pytest.approx(
        np.exp(np.log(jitter).mean()))
    with pytest.raises(ValueError, match="positive"):
        equivalence(a, -a, Margin.parse("x1.10"))


@pytest.mark.parametrize("text,match", [("x0.9", "> 1"), ("-0.1", "> 0"), ("abc", "expected a difference")])
def test_bad_margins_are_refused(text, match):
    with pytest.raises(ValueError, match=match):
        Margin.parse(text)
