"""The statistics of a study: per-row mean and spread over seeds, differences between rows with intervals that
have the coverage they claim, and main effects and interactions of a factorial design.

Seeds are the unit of replication. When two rows were run with the same seeds (same data order, same noise
stream per step) their difference is taken per seed (paired); otherwise the two groups are compared as
independent samples (Welch). The default interval is Student's t (exact under normal seed noise for any
n >= 2); the p-value of a paired difference is the exact sign-flip permutation p (no normality needed; with
n seeds it cannot go below 2 / 2^n, so n < 6 can never reach 0.05); a Welch comparison uses the Welch t p.
Every comparison carries its n and the minimum detectable effect (MDE: the true difference the two-sided
t-test at alpha = 0.05 finds with 80% power, at the observed seed SD), so "no detectable difference" and "too
few seeds" are told apart. A percentile bootstrap is offered only from ``BOOT_MIN_N`` seeds: below that its
interval is about [min, max] of the differences (coverage ~75% at n = 3, not 95%).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize, stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # two-sided level of the tests and of the MDE
POWER = 0.8  # the power the MDE is computed at
EXACT_MAX_N = 16  # sign-flip p: all 2^n flips up to this n, random flips above
N_RANDOM_FLIPS = 20000
BOOT_MIN_N = 10  # fewer paired seeds: the bootstrap is refused
BOOT_SEED = 0  # the bootstrap's and the random flips' own seed: reports are reproducible


@dataclass
class Diff:
    """Row minus other row: point estimate, interval (None where there is none), test and MDE."""

    diff: float
    lo: float | None
    hi: float | None
    n: int  # paired: the number of common seeds; Welch: the row's seeds
    paired: bool
    method: str = "none"  # the interval: "paired t", "Welch t", "paired bootstrap", "none"
    p: float | None = None
    p_method: str = ""  # "exact sign-flip", "random sign-flip", "Welch t"
    p_min: float | None = None  # the smallest p the test can give at this n
    mde: float | None = None
    n_other: int | None = None  # Welch: the other row's seeds
    note: str = ""  # e.g. why the bootstrap was refused
    p_holm: float | None = None  # set by ``holm_adjust`` across one table's comparisons
    rows: tuple[str, str] | None = None  # (row, other row) where built from a table's cells
    off_footing: dict[int, str] = field(default_factory=dict)  # seeds left out: two precisions (``one_footing``)

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)

    @property
    def testable(self) -> bool:
        """The test can reach p < ALPHA at this n (the sign-flip needs n >= 6; nothing below 2 seeds)."""
        return self.p is not None and self.p_min is not None and self.p_min < ALPHA

    @property
    def significant(self) -> bool:
        """Holm-adjusted (else raw) p < ALPHA, where the test has its nominal level."""
        p = self.p_holm if self.p_holm is not None else self.p
        return self.testable and p is not None and p < ALPHA


def summarise(cells: pd.DataFrame, column: str, by: str = "variant", order: list[str] | None = None) -> pd.DataFrame:
    """Per row: n, mean, std (ddof=1; NaN with one seed), min, max and the seeds, in ``order``."""
    g = cells.dropna(subset=[column]).groupby(by, sort=False)[column]
    out = pd.DataFrame({"n": g.count(), "mean": g.mean(), "std": g.std(ddof=1), "min": g.min(), "max": g.max()})
    seeds = cells.dropna(subset=[column]).groupby(by, sort=False)["seed"].apply(lambda s: sorted(int(x) for x in s))
    out["seeds"] = seeds
    if order:
        out = out.reindex([o for o in order if o in out.index])
    return out


# ---- building blocks (vectorised over leading axes where the coverage test needs it) ---------------------------
def t_interval(x: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and Student-t interval of the mean over the last axis (n >= 2)."""
    x = np.asarray(x, float)
    n = x.shape[-1]
    mean = x.mean(-1)
    half = stats.t.ppf(0.5 + confidence / 2, n - 1) * x.std(-1, ddof=1) / math.sqrt(n)
    return mean, mean - half, mean + half


def mean_intervals(cells: pd.DataFrame, column: str, order: list[str], by: str = "variant") -> pd.DataFrame:
    """Per row in ``order``: n, mean and the 95% t interval of the mean over seeds (lo = hi = NaN with 1 seed)."""
    rows = []
    for v in order:
        x = cells.loc[cells[by] == v, column].dropna().to_numpy(float)
        if len(x):
            mean, lo, hi = (float(a) for a in t_interval(x)) if len(x) >= 2 else (float(x.mean()), math.nan, math.nan)
            rows.append({by: v, "n": len(x), "mean": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(rows, columns=[by, "n", "mean", "lo", "hi"])


def sign_flip_p(d: np.ndarray, n_random: int = N_RANDOM_FLIPS, seed: int = BOOT_SEED) -> tuple[float, str]:
    """Two-sided sign-flip permutation p of mean(d) = 0: exact over all 2^n flips for n <= EXACT_MAX_N, else
    (1 + #random flips at least as extreme) / (1 + n_random)."""
    d = np.asarray(d, float)
    n = len(d)
    if n <= EXACT_MAX_N:
        signs = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        sums = np.abs(signs @ d)
        return float(np.mean(sums >= abs(d.sum()) * (1 - 1e-12) - 1e-15)), "exact sign-flip"
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_random, n))
    sums = np.abs(signs @ d)
    return float((1 + np.sum(sums >= abs(d.sum()) * (1 - 1e-12) - 1e-15)) / (1 + n_random)), "random sign-flip"


def sign_flip_p_min(n: int) -> float:
    """The smallest two-sided p the sign-flip test can give with n differences."""
    return 2.0 / 2 ** n if n <= EXACT_MAX_N else 1.0 / (1 + N_RANDOM_FLIPS)


@functools.lru_cache(maxsize=256)
def _noncentrality(df: float, alpha: float, power: float) -> float:
    """The noncentrality at which a two-sided t-test (level ``alpha``, ``df``) rejects with ``power``."""
    tc = stats.t.ppf(1 - alpha / 2, df)

    def gap(nc):
        lower = stats.nct.sf(tc, df, -nc)  # P(T < -tc) by symmetry; nct.cdf(-tc) can be NaN at df = 1
        return stats.nct.sf(tc, df, nc) + (lower if math.isfinite(lower) else 0.0) - power

    hi = tc + 4.0
    while gap(hi) < 0:
        hi *= 2
    return float(optimize.brentq(gap, 0.0, hi, xtol=1e-10))


def mde(se: float, df: float, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The true difference a two-sided t-test (level ``alpha``, ``df`` degrees of freedom, standard error
    ``se``) detects with probability ``power``: ``nc * se`` where the noncentral t with noncentrality nc puts
    ``power`` outside +-t_crit."""
    if not (math.isfinite(se) and math.isfinite(df)) or df <= 0:
        return None
    if se == 0:
        return 0.0
    return _noncentrality(float(df), alpha, power) * se


def holm(pvalues: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment; None entries are kept and do not count as tests."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(pvalues)
    m, running = len(idx), 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def holm_adjust(diffs: list[Diff], keys: list | None = None) -> None:
    """Set ``p_holm`` on each comparison, the family being these comparisons; comparisons with equal ``keys``
    (the same test shown twice, e.g. a -> b and b -> a) count once and share their adjusted p."""
    keys = keys if keys is not None else list(range(len(diffs)))
    first = {}
    for k, d in zip(keys, diffs, strict=True):
        first.setdefault(k, d)
    adjusted = dict(zip(first, holm([d.p for d in first.values()]), strict=True))
    for k, d in zip(keys, diffs, strict=True):
        d.p_holm = adjusted[k]


# ---- differences ---------------------------------------------------------------------------------------------
def paired_diff(d: np.ndarray, confidence: float = CONFIDENCE) -> Diff:
    """Per-seed differences d: t interval, sign-flip p, MDE of the paired t-test."""
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return Diff(mean, None, None, n, True, note="1 common seed: no interval")
    _, lo, hi = t_interval(d, confidence)
    p, how = sign_flip_p(d)
    return Diff(mean, float(lo), float(hi), n, True, method="paired t", p=p, p_method=how,
                p_min=sign_flip_p_min(n), mde=mde(float(d.std(ddof=1)) / math.sqrt(n), n - 1))


def welch_interval(va: np.ndarray, vb: np.ndarray, confidence: float = CONFIDENCE):
    """Independent groups over the last axis (>= 2 each): mean(a) - mean(b), its Welch t interval, standard
    error and Satterthwaite df."""
    va, vb = np.asarray(va, float), np.asarray(vb, float)
    na, nb = va.shape[-1], vb.shape[-1]
    qa, qb = va.var(-1, ddof=1) / na, vb.var(-1, ddof=1) / nb
    se = np.sqrt(qa + qb)
    with np.errstate(invalid="ignore", divide="ignore"):
        df = (qa + qb) ** 2 / (qa ** 2 / (na - 1) + qb ** 2 / (nb - 1))
    diff = va.mean(-1) - vb.mean(-1)
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    return diff, diff - half, diff + half, se, df


def welch_diff(va: np.ndarray, vb: np.ndarray, confidence: float = CONFIDENCE) -> Diff:
    """Independent groups: Welch t interval and Welch t p (Satterthwaite df), MDE of the Welch t-test."""
    diff = float(va.mean() - vb.mean())
    if len(va) < 2 or len(vb) < 2:
        return Diff(diff, None, None, len(va), False, n_other=len(vb), note="a row with 1 seed: no interval")
    _, lo, hi, se, df = (float(x) for x in welch_interval(va, vb, confidence))
    if se == 0:
        return Diff(diff, diff, diff, len(va), False, method="Welch t", p_method="Welch t", mde=0.0,
                    n_other=len(vb), note="no spread over seeds: no test")
    p = float(2 * stats.t.sf(abs(diff) / se, df))
    return Diff(diff, lo, hi, len(va), False, method="Welch t", p=p, p_method="Welch t", p_min=0.0,
                mde=mde(se, df), n_other=len(vb))


def bootstrap_diff(a: dict[int, float], b: dict[int, float], *, n_boot: int = 10000,
                   confidence: float = CONFIDENCE, seed: int = BOOT_SEED) -> Diff:
    """mean(a) - mean(b) with a paired percentile bootstrap interval, for rows with the same >= BOOT_MIN_N seeds
    (below that it is refused: its coverage is far below the nominal); p and MDE as ``paired_diff``."""
    common = sorted(set(a) & set(b))
    if set(a) != set(b) or len(common) < BOOT_MIN_N:
        raise ValueError(f"the bootstrap needs the same >= {BOOT_MIN_N} seeds in both rows (here {len(common)} "
                         "common): below that its percentile interval undercovers; use the t interval")
    d = np.array([a[s] - b[s] for s in common])
    res = paired_diff(d, confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate samples (all equal) warn; the interval is then a point
        boot = stats.bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=confidence,
                               method="percentile", random_state=np.random.default_rng(seed))
    lo, hi = float(boot.confidence_interval.low), float(boot.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        lo = hi = res.diff
    res.lo, res.hi, res.method = lo, hi, "paired bootstrap"
    res.note = f"percentile bootstrap, {n_boot} resamples (n = {len(common)} >= {BOOT_MIN_N})"
    return res


def compare(a: dict[int, float], b: dict[int, float], *, interval: str = "t", n_boot: int = 10000,
            confidence: float = CONFIDENCE) -> Diff:
    """mean(a) - mean(b); ``a``, ``b`` map seed -> value. Paired when both have the same seeds, else Welch.
    ``interval="bootstrap"`` asks for the paired bootstrap, given only from BOOT_MIN_N seeds (else t, noted)."""
    if interval not in ("t", "bootstrap"):
        raise ValueError(f"interval must be 't' or 'bootstrap', not {interval!r}")
    if set(a) == set(b) and len(a) >= 1:
        if interval == "bootstrap":
            if len(a) >= BOOT_MIN_N:
                return bootstrap_diff(a, b, n_boot=n_boot, confidence=confidence)
            res = paired_diff(np.array([a[s] - b[s] for s in sorted(a)]), confidence)
            res.note = f"bootstrap refused: n = {len(a)} < {BOOT_MIN_N}"
            return res
        return paired_diff(np.array([a[s] - b[s] for s in sorted(a)]), confidence)
    return welch_diff(np.array(list(a.values()), float), np.array(list(b.values()), float), confidence)


def seed_values(cells: pd.DataFrame, column: str, by: str = "variant") -> dict[str, dict[int, float]]:
    """Row -> {seed: value} of ``column``."""
    return {name: dict(zip(g["seed"].astype(int), g[column].astype(float), strict=True))
            for name, g in cells.dropna(subset=[column]).groupby(by, sort=False)}


# What two cells of one seed must also share to be a pair: the precision training ran in. ``train.precision=auto``
# (in the spec hash as "auto") resolves per machine: bf16 autocast where the CPU or GPU has native bf16 matmuls,
# fp32 elsewhere (dfgan.runtime.resolve_precision); runs tag what it resolved to.
FOOTING = "tags.speed_precision"


def footings(cells: pd.DataFrame, by: str = "variant") -> dict[str, dict[int, str]]:
    """Row -> {seed: footing} (the resolved precision); empty where the runs do not say."""
    if FOOTING not in cells:
        return {}
    return {name: dict(zip(g["seed"].astype(int), g[FOOTING].astype(str), strict=True))
            for name, g in cells.dropna(subset=[FOOTING]).groupby(by, sort=False)}


def one_footing(a: dict[int, float], b: dict[int, float], foot_a: dict[int, str] | None,
                foot_b: dict[int, str] | None) -> tuple[dict[int, float], dict[int, float], dict[int, str]]:
    """``a`` and ``b`` without the seeds both ran on different footings (a pair of an fp32 cell and a bf16 one
    differs by more than the component compared), and those seeds -> "fp32 vs bf16", to be named."""
    foot_a, foot_b = foot_a or {}, foot_b or {}
    off = {s: f"{foot_a[s]} vs {foot_b[s]}" for s in sorted(set(a) & set(b))
           if s in foot_a and s in foot_b and foot_a[s] != foot_b[s]}
    if not off:
        return a, b, off
    return {s: v for s, v in a.items() if s not in off}, {s: v for s, v in b.items() if s not in off}, off


FOOTING_NOTE = ("One footing: a pair is two cells of one seed that also trained in one precision (tag "
                "speed_precision: train.precision=auto is bf16 autocast on a CPU or GPU with native bf16, fp32 "
                "elsewhere, and the spec hash records only \"auto\"); a seed whose two cells ran in different "
                "precisions is left out of that comparison and named beside it.")


def off_footing_note(off: dict[int, str]) -> str:
    return "left out, two precisions: " + ", ".join(f"seed {s} ({f})" for s, f in off.items()) if off else ""


def _compare_on_footing(name: str, other: str, vals: dict, foot: dict, interval: str, n_boot: int) -> Diff:
    a, b, off = one_footing(vals[name], vals[other], foot.get(name), foot.get(other))
    d = compare(a, b, interval=interval, n_boot=n_boot) if a and b else Diff(math.nan, None, None, 0, True)
    d.rows, d.off_footing = (name, other), off
    d.note = "; ".join(filter(None, [d.note, off_footing_note(off)]))
    return d


def differences(cells: pd.DataFrame, column: str, reference: str, by: str = "variant", n_boot: int = 10000,
                interval: str = "t") -> dict[str, Diff]:
    """Each row's difference to the reference row (no Holm adjustment: that is per table), over the seeds on
    one footing (``one_footing``)."""
    vals, foot = seed_values(cells, column, by), footings(cells, by)
    if reference not in vals:
        return {}
    return {name: _compare_on_footing(name, reference, vals, foot, interval, n_boot)
            for name in vals if name != reference}


def steps(cells: pd.DataFrame, column: str, order: list[str], by: str = "variant", n_boot: int = 10000,
          interval: str = "t") -> dict[str, Diff]:
    """Each row's difference to the row before it in ``order`` (the cumulative table's step: the component
    just added); rows without values are skipped over."""
    vals, foot = seed_values(cells, column, by), footings(cells, by)
    present = [o for o in order if o in vals]
    return {cur: _compare_on_footing(cur, prev, vals, foot, interval, n_boot)
            for prev, cur in zip(present, present[1:], strict=False)}


# ---- factorial -----------------------------------------------------------------------------------------------
@dataclass
class Effects:
    table: pd.DataFrame  # term, effect, se, lo, hi, p, p_holm, mde
    n: int
    df_resid: int  # residual df of the fitted model (pure error + the omitted 3- and higher-way terms)
    r2: float
    coding: str
    df_error: int = 0  # pure-error df: sum over cells of (seeds - 1); the intervals' df
    replicated_cells: int = 0
    cells: int = 0
    refusal: str = ""  # why there are no intervals, if there are none


def factorial_effects(cells: pd.DataFrame, column: str, axes: dict[str, list[str]],
                      confidence: float = CONFIDENCE) -> Effects:
    """OLS of ``column`` on the axes (each two-level, coded +1 = the first level, -1 = the second) with all
    two-way interactions. Reported effect = 2 * coefficient: for a main effect, mean(first level) -
    mean(second level) averaged over the other axes; for A x B, half the change of A's effect between B's
    levels. The error variance is the pure error of seed replication only (spread of seeds within a cell),
    never the model residual, which would mix seed noise with the omitted 3- and 4-way interactions; without
    any replicated cell there are no intervals. Holm-adjusted p over the terms."""
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
    # pure error: within-cell spread of the seeds
    cell = pd.Series(list(zip(*[d[f"tags.factor.{a}"] for a in names], strict=True)), index=d.index)
    within = pd.Series(y, index=d.index).groupby(cell)
    sizes = within.count()
    ss_pe = float(((pd.Series(y, index=d.index) - within.transform("mean")) ** 2).sum())
    df_pe = int((sizes - 1).sum())
    refusal = "" if df_pe > 0 else (
        f"each of the {len(sizes)} cells ran once (no seed replication), so seed noise cannot be told apart from "
        "the 3- and higher-way interactions; no intervals or p-values (run at least 2 seeds per cell)")
    if df_pe > 0:
        cov = ss_pe / df_pe * np.linalg.pinv(X.T @ X)
        se = np.sqrt(np.clip(np.diag(cov), 0, None))
        tq = stats.t.ppf(0.5 + confidence / 2, df_pe)
    else:
        se, tq = np.full(p, np.nan), np.nan
    rows = []
    for i, term in enumerate(terms):
        if term == "intercept":
            continue
        eff, s = 2 * beta[i], 2 * se[i]
        pval = float(2 * stats.t.sf(abs(eff / s), df_pe)) if df_pe > 0 and s > 0 else float("nan")
        m = mde(float(s), df_pe) if df_pe > 0 else None
        rows.append({"term": term, "effect": eff, "se": s, "lo": eff - tq * s, "hi": eff + tq * s, "p": pval,
                     "mde": float("nan") if m is None else m})
    table = pd.DataFrame(rows)
    adj = holm([None if not math.isfinite(v) else v for v in table["p"]]) if len(table) else []
    table["p_holm"] = [float("nan") if v is None else v for v in adj]
    coding = "; ".join(f"{a}: +1 = {lv[0]}, -1 = {lv[1]}" for a, lv in axes.items())
    return Effects(table, n, int(dof), r2, coding, df_pe, int((sizes > 1).sum()), len(sizes), refusal)
