"""The statistics of a study: per-row mean and spread over seeds, differences with bootstrap intervals, and
main effects and interactions of a factorial design (OLS, effects coding).

Seeds are the unit of replication. When two rows were run with the same seeds (same data order, same noise
stream per step), the difference is bootstrapped over paired seeds; otherwise over the two groups
independently. With 2-3 seeds an interval is wide and coarse: the report says how many seeds each has.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
BOOT_SEED = 0  # the bootstrap's own random seed: reports are reproducible


@dataclass
class Diff:
    """Row minus reference: point estimate and a percentile bootstrap interval (None with < 2 seeds)."""

    diff: float
    lo: float | None
    hi: float | None
    n: int
    paired: bool

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


def summarise(cells: pd.DataFrame, column: str, by: str = "variant", order: list[str] | None = None) -> pd.DataFrame:
    """Per row: n, mean, std (ddof=1; NaN with one seed), min, max and the seeds, in ``order``."""
    g = cells.dropna(subset=[column]).groupby(by, sort=False)[column]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "std": g.std(ddof=1), "min": g.min(), "max": g.max()})
    seeds = cells.dropna(subset=[column]).groupby(by, sort=False)["seed"].apply(lambda s: sorted(int(x) for x in s))
    out["seeds"] = seeds
    if order:
        out = out.reindex([o for o in order if o in out.index])
    return out


def bootstrap_diff(a: dict[int, float], b: dict[int, float], *, n_boot: int = 10000,
                   confidence: float = CONFIDENCE, seed: int = BOOT_SEED) -> Diff:
    """mean(a) - mean(b) with a percentile bootstrap interval; ``a``, ``b`` map seed -> value.

    Paired over the common seeds when both have the same seeds, else two independent resamplings."""
    from scipy import stats

    common = sorted(set(a) & set(b))
    paired = len(common) >= 2 and set(a) == set(b)
    va, vb = np.array(list(a.values()), float), np.array(list(b.values()), float)
    diff = float(va.mean() - vb.mean())
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate samples (all equal) warn; the interval is then a point
        if paired:
            d = np.array([a[s] - b[s] for s in common])
            res = stats.bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=confidence,
                                  method="percentile", random_state=rng)
        elif len(va) >= 2 and len(vb) >= 2:
            res = stats.bootstrap((va, vb), lambda x, y, axis: x.mean(axis) - y.mean(axis), n_resamples=n_boot,
                                  confidence_level=confidence, method="percentile", random_state=rng)
        else:
            return Diff(diff, None, None, min(len(va), len(vb)), False)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):  # all resamples equal
        lo = hi = diff
    return Diff(diff, lo, hi, len(common) if paired else min(len(va), len(vb)), paired)


def differences(cells: pd.DataFrame, column: str, reference: str, by: str = "variant",
                n_boot: int = 10000) -> dict[str, Diff]:
    """Each row's difference to the reference row."""
    vals = {name: dict(zip(g["seed"].astype(int), g[column].astype(float), strict=True))
            for name, g in cells.dropna(subset=[column]).groupby(by, sort=False)}
    if reference not in vals:
        return {}
    return {name: bootstrap_diff(v, vals[reference], n_boot=n_boot) for name, v in vals.items() if name != reference}


# ---- factorial -----------------------------------------------------------------------------------------------
@dataclass
class Effects:
    table: pd.DataFrame  # term, effect, se, lo, hi, p
    n: int
    df_resid: int
    r2: float
    coding: str


def factorial_effects(cells: pd.DataFrame, column: str, axes: dict[str, list[str]],
                      confidence: float = CONFIDENCE) -> Effects:
    """OLS of ``column`` on the axes (each two-level, coded +1 = the first level, -1 = the second) with all
    two-way interactions. Reported effect = 2 * coefficient: for a main effect, mean(first level) -
    mean(second level) averaged over the other axes; for A x B, half the change of A's effect between B's
    levels. Intervals are t intervals from the residual variance (seed-to-seed and higher-order terms)."""
    from scipy import stats

    d = cells.dropna(subset=[column])
    names = list(axes)
    for a, levels in axes.items():
        if len(levels) != 2:
            raise ValueError(f"factorial effects need two levels per axis; '{a}' has {levels}")
        col = f"tags.factor.{a}"
        unknown = set(d[col]) - set(levels)
        if unknown:
            raise ValueError(f"axis '{a}': runs have levels {sorted(unknown)} not in {levels}")
    x = {a: np.where(d[f"tags.factor.{a}"] == axes[a][0], 1.0, -1.0) for a in names}
    terms = ["intercept", *names, *[f"{a} x {b}" for a, b in itertools.combinations(names, 2)]]
    cols = [np.ones(len(d))] + [x[a] for a in names] + [x[a] * x[b] for a, b in itertools.combinations(names, 2)]
    X = np.column_stack(cols)
    y = d[column].to_numpy(float)
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    n, p = X.shape
    dof = n - np.linalg.matrix_rank(X)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - float(resid @ resid) / ss_tot if ss_tot > 0 else float("nan")
    rows = []
    if dof > 0:
        sigma2 = float(resid @ resid) / dof
        cov = sigma2 * np.linalg.pinv(X.T @ X)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
        tq = stats.t.ppf(0.5 + confidence / 2, dof)
    else:
        se, tq = np.full(p, np.nan), np.nan
    for i, term in enumerate(terms):
        if term == "intercept":
            continue
        eff, s = 2 * beta[i], 2 * se[i]
        pval = float(2 * stats.t.sf(abs(eff / s), dof)) if dof > 0 and s > 0 else float("nan")
        rows.append({"term": term, "effect": eff, "se": s, "lo": eff - tq * s, "hi": eff + tq * s, "p": pval})
    coding = "; ".join(f"{a}: +1 = {lv[0]}, -1 = {lv[1]}" for a, lv in axes.items())
    return Effects(pd.DataFrame(rows), n, int(dof), r2, coding)
