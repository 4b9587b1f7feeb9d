"""The report's statistics: the intervals have the coverage they claim (checked by simulation), the bootstrap is
refused where it undercovers, the sign-flip p, the MDE, Holm, factorial pure error, and the cumulative table's
per-step rows recomputed by hand with scipy.stats.t."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from dfgan.reports.stats import (
    BOOT_MIN_N,
    bootstrap_diff,
    compare,
    factorial_effects,
    holm,
    holm_adjust,
    mde,
    sign_flip_p,
    t_interval,
    welch_interval,
)
from dfgan.reports.tables import table_differences, table_effects, to_latex, to_markdown

N_STUDIES = 2000
EFFECT = 0.3  # the known true difference of the simulated studies


def _paired_studies(rng, n):
    """N_STUDIES paired studies of n seeds: a shared seed effect (cancels in the pair) + normal row noise."""
    seed_effect = rng.normal(0, 2.0, (N_STUDIES, n))
    a = 1.0 + EFFECT + seed_effect + rng.normal(0, 0.5, (N_STUDIES, n))
    b = 1.0 + seed_effect + rng.normal(0, 0.5, (N_STUDIES, n))
    return a - b


@pytest.mark.parametrize("n", [3, 5])
def test_paired_t_interval_has_its_coverage(n):
    d = _paired_studies(np.random.default_rng(n), n)
    _, lo, hi = t_interval(d)
    coverage = np.mean((lo <= EFFECT) & (EFFECT <= hi))
    assert 0.93 <= coverage <= 0.97, coverage


def test_welch_interval_has_its_coverage():
    rng = np.random.default_rng(7)
    a = 1.0 + EFFECT + rng.normal(0, 0.2, (N_STUDIES, 3))
    b = 1.0 + rng.normal(0, 0.05, (N_STUDIES, 4))
    _, lo, hi, _, _ = welch_interval(a, b)
    coverage = np.mean((lo <= EFFECT) & (EFFECT <= hi))
    assert 0.93 <= coverage <= 0.97, coverage


def test_percentile_bootstrap_undercovers_at_three_seeds_and_is_refused():
    """The old default (paired percentile bootstrap) at n = 3 is about [min, max]: ~75% coverage, not 95%."""
    rng = np.random.default_rng(3)
    d = _paired_studies(rng, 3)
    idx = rng.integers(0, 3, (N_STUDIES, 1000, 3))
    means = np.take_along_axis(d[:, None, :], idx, axis=2).mean(-1)
    lo, hi = np.percentile(means, [2.5, 97.5], axis=1)
    coverage = np.mean((lo <= EFFECT) & (EFFECT <= hi))
    assert coverage < 0.85, coverage
    three = {s: float(v) for s, v in enumerate(d[0])}
    with pytest.raises(ValueError, match="bootstrap needs"):
        bootstrap_diff(three, dict.fromkeys(three, 0.0))
    asked = compare(three, dict.fromkeys(three, 0.0), interval="bootstrap")
    assert asked.method == "paired t" and "refused" in asked.note
    ten = {s: float(v) for s, v in enumerate(_paired_studies(rng, BOOT_MIN_N)[0])}
    boot = compare(ten, dict.fromkeys(ten, 0.0), interval="bootstrap", n_boot=2000)
    assert boot.method == "paired bootstrap" and boot.n == BOOT_MIN_N and "10 >= 10" in boot.note
    assert boot.lo < boot.diff < boot.hi


def test_sign_flip_p():
    assert sign_flip_p(np.array([0.1, 0.2, 0.3]))[0] == pytest.approx(0.25)  # 2 of 8 flips are as extreme
    assert sign_flip_p(np.array([1.0, -2.0, 3.0]))[0] == pytest.approx(0.75)
    assert sign_flip_p(np.full(6, 0.5))[0] == pytest.approx(2 / 64)
    # exact test: under the null its size is at most the level
    rng = np.random.default_rng(0)
    p = np.array([sign_flip_p(rng.normal(0, 1, 6))[0] for _ in range(N_STUDIES)])
    assert np.mean(p < 0.05) <= 0.05 + 0.01
    p_big, how = sign_flip_p(np.arange(1.0, 21.0))
    assert how == "random sign-flip" and p_big < 1e-3


def test_mde_has_eighty_percent_power():
    """At the MDE (true SD known), the two-sided paired t-test rejects ~80% of the time."""
    n, sd = 5, 0.4
    delta = mde(sd / math.sqrt(n), n - 1)
    assert delta == pytest.approx((stats.t.ppf(0.975, 4) + stats.t.ppf(0.8, 4)) * sd / math.sqrt(n), rel=0.05)
    d = np.random.default_rng(5).normal(delta, sd, (4000, n))
    tstat = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    power = np.mean(np.abs(tstat) > stats.t.ppf(0.975, n - 1))
    assert 0.77 <= power <= 0.83, power
    assert mde(1.0, 1) > mde(1.0, 2) > mde(1.0, 10) > 2.8  # fewer seeds: larger effects go unseen
    assert mde(0.0, 3) == 0.0 and mde(1.0, 0) is None


def test_holm():
    assert holm([0.01, 0.04, 0.03, None, 0.5]) == pytest.approx([0.04, 0.09, 0.09, None, 0.5])
    a, b, c = (compare({1: x, 2: x + 0.1, 3: x - 0.05}, {1: 0.0, 2: 0.0, 3: 0.0}) for x in (1.0, 2.0, 3.0))
    holm_adjust([a, b, c], keys=["ab", "ab", "c"])  # the first two are one test shown twice: family of 2
    assert a.p_holm == b.p_holm == pytest.approx(min(1, 2 * a.p)) and c.p_holm == pytest.approx(min(1, 2 * c.p))


def test_paired_welch_and_one_seed_differences():
    a = {1: 1.0, 2: 1.1, 3: 0.9, 4: 1.05}
    b = {1: 1.05, 2: 0.95, 3: 1.0, 4: 1.05}
    d = compare(a, b)
    dd = np.array([a[s] - b[s] for s in a])
    half = stats.t.ppf(0.975, 3) * dd.std(ddof=1) / 2
    assert d.paired and d.method == "paired t" and d.n == 4 and d.p_method == "exact sign-flip"
    assert (d.lo, d.hi) == pytest.approx((dd.mean() - half, dd.mean() + half))
    assert d.p_min == pytest.approx(2 / 16) and not d.testable and not d.significant
    w = compare({1: 2.0, 2: 2.2}, {5: 1.0, 6: 1.1, 7: 0.9})
    ref = stats.ttest_ind([2.0, 2.2], [1.0, 1.1, 0.9], equal_var=False)
    assert not w.paired and w.method == "Welch t" and (w.n, w.n_other) == (2, 3)
    assert w.diff == pytest.approx(1.1) and w.p == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (w.lo, w.hi) == pytest.approx((ci.low, ci.high)) and w.testable
    one = compare({1: 2.0}, {1: 1.0})
    assert one.lo is None and one.p is None and not one.significant


def _cells(values: dict[str, list[float]], seeds=None) -> pd.DataFrame:
    rows = []
    for v, vals in values.items():
        for s, x in zip(seeds or range(len(vals)), vals, strict=False):
            rows.append({"variant": v, "seed": s, "metrics.m": x})
    return pd.DataFrame(rows)


def test_cumulative_table_each_step_by_hand():
    """Each row against the previous one and against full, with interval, n, MDE, p and Holm p; the numbers are
    recomputed here with scipy.stats.t and the sign-flip by enumeration."""
    rng = np.random.default_rng(11)
    base = rng.normal(0.5, 0.05, 8)
    vals = {"a": base, "b": base + 0.2 + rng.normal(0, 0.01, 8), "full": None}
    vals["full"] = vals["b"] + rng.normal(0, 0.01, 8)  # the last step adds nothing
    order = ["a", "b", "full"]
    t = table_differences(_cells({k: list(v) for k, v in vals.items()}), order, ["m"], "full", "m (test)",
                          key="table2_components", title="steps", n_boot=100, previous=True)
    f = t.frame.set_index("variant")
    assert f.loc["a", "Δ m vs previous row [95% CI]"] == "(first row)"
    assert f.loc["full", "Δ m vs full [95% CI]"] == "(reference)"

    d = vals["b"] - vals["a"]  # step a -> b, by hand
    half = stats.t.ppf(0.975, 7) * d.std(ddof=1) / math.sqrt(8)
    signs = np.array(list(itertools.product([-1, 1], repeat=8)))
    p = np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12)
    assert p == pytest.approx(2 / 256)
    # 3 distinct tests (full - b and b - full are one), Holm's smallest: 3 * p
    assert f.loc["b", "Δ m vs previous row [95% CI]"] == \
        f"{d.mean():+.3g} [{d.mean() - half:+.3g}, {d.mean() + half:+.3g}] *"
    cell = f.loc["b", "m vs previous: n, MDE, p"]
    assert cell.startswith("n 8, paired t, MDE ") and f"p 0.0078 (Holm {3 * p:.2g})" in cell
    assert cell.endswith(": difference")
    assert f.loc["full", "m vs previous: n, MDE, p"].endswith("no detectable difference")
    assert f.loc["b", "m vs full: n, MDE, p"] == f.loc["full", "m vs previous: n, MDE, p"]
    notes = " ".join(t.notes)
    assert "3 distinct tests" in notes and "not evidence that the rows are equal" in notes
    assert r"\toprule" in to_latex(t) and to_markdown(t).count("\n| ") == 4


def test_table_refuses_marks_with_three_seeds_and_uses_welch_on_other_seeds():
    cells = pd.concat([_cells({"worse": [0.50, 0.55, 0.52], "full": [0.80, 0.82, 0.81]}),
                       _cells({"other": [0.6, 0.7]}, seeds=[7, 8])])
    t = table_differences(cells, ["worse", "other", "full"], ["m"], "full", "m (test)", key="k", title="t",
                          n_boot=100)
    f = t.frame.set_index("variant")
    assert not f.loc["worse", "Δ m vs full [95% CI]"].endswith("*")  # t interval far from 0, but n = 3
    assert f.loc["worse", "m vs full: n, MDE, p"].endswith("n too small for the test (t interval excludes 0)")
    assert f.loc["other", "m vs full: n, MDE, p"].startswith("n 2+3, Welch t")
    notes = " ".join(t.notes)
    assert "cannot go below 2/2^n (0.25)" in notes and "Welch t interval" in notes


def _factorial(rng, seeds, three_way=0.0):
    axes = {"a": ["x", "y"], "b": ["x", "y"], "c": ["x", "y"]}
    rows = []
    for levels in itertools.product(*axes.values()):
        s = [1.0 if lv == "x" else -1.0 for lv in levels]
        mean = 0.5 + 0.1 * s[0] + three_way * s[0] * s[1] * s[2]
        for seed in range(seeds):
            rows.append({**{f"tags.factor.{k}": lv for k, lv in zip(axes, levels, strict=True)}, "seed": seed,
                         "metrics.m": mean + rng.normal(0, 0.01)})
    return pd.DataFrame(rows), axes


def test_factorial_error_from_seed_replication_only():
    rng = np.random.default_rng(2)
    cells, axes = _factorial(rng, 2, three_way=0.2)  # a big 3-way interaction the model omits
    eff = factorial_effects(cells, "metrics.m", axes)
    t = eff.table.set_index("term")
    assert eff.df_error == 8 and eff.df_resid == 16 - 7 and eff.replicated_cells == 8
    # pure error: within-cell variance; se(effect) = 2 sigma / sqrt(N) in a balanced 2^k design
    within = cells.groupby([f"tags.factor.{a}" for a in axes])["metrics.m"].var(ddof=1).mean()
    assert t.loc["a", "se"] == pytest.approx(2 * math.sqrt(within / 16))
    assert t.loc["a", "lo"] <= 0.2 <= t.loc["a", "hi"] and t.loc["a", "p_holm"] < 0.05
    assert t.loc["a", "se"] < 0.05  # the residual would have taken the 3-way term in: se ~0.1
    assert (t["p_holm"] >= t["p"]).all() and t["mde"].notna().all()
    md = to_markdown(table_effects(eff, "m", "m (test)"))
    assert "pure error" in md and "df = 8" in md

    one, _ = _factorial(rng, 1)
    eff1 = factorial_effects(one, "metrics.m", axes)
    assert eff1.df_error == 0 and "no seed replication" in eff1.refusal
    assert eff1.table["lo"].isna().all() and eff1.table["p"].isna().all()
    assert eff1.table.set_index("term").loc["a", "effect"] == pytest.approx(0.2, abs=0.03)
    t1 = table_effects(eff1, "m", "m (test)")
    assert set(t1.frame["95% CI"]) == {"no replication: none"} and set(t1.frame[""]) == {""}
    assert any("no seed replication" in n for n in t1.notes)


def test_final_points_figure_draws_the_t_interval(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.container import ErrorbarContainer

    from dfgan.reports import figures

    cells = _cells({"a": [0.40, 0.45, 0.47], "b": [0.50, 0.52, 0.49, 0.56], "c": [0.3]})
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.update(fig=fig) or path)  # keep it open
    figures.final_points(cells, "m", ["a", "b", "c"], tmp_path / "f.png")
    bars = [c for c in drawn["fig"].axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2  # none for the 1-seed row
    for bar, v in zip(bars, ["a", "b"], strict=True):
        x = cells.loc[cells["variant"] == v, "metrics.m"].to_numpy()
        half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
        seg = bar.lines[2][0].get_segments()[0]
        assert (seg[0][0], seg[1][0]) == pytest.approx((x.mean() - half, x.mean() + half))
    plt.close(drawn["fig"])
