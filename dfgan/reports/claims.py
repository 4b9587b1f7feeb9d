"""The claims report: for each claim a study file states (``claims:``), what its runs say about it.

A claim reads "the row with the paper's choice beats the row without it" (DF-GAN, CVPR 2022: the one-stage
backbone beats stacked generators, Sec. 3.1; the one-way output beats the two-way one, Sec. 3.2.2; MA-GP helps
text-image consistency, Sec. 3.2.1; the DFBlock beats cross-modal attention at lower cost, Sec. 3.3). Per claim:

- the difference paper row - arm row per seed (paired: same seeds = same data order and noise, and one precision:
  ``dfgan.reports.stats.one_footing``), oriented by the
  metric's direction (``dfgan.metrics.names.higher_is_better``) so that a positive difference is in the
  paper's favour, with its 95% Student-t interval (``dfgan.reports.stats.compare``);
- the test that matches that interval: the paired t test (Welch where the rows have different seeds),
  Holm-adjusted across the claims of the table, and beside it the exact sign-flip p, which needs no normality
  but cannot go below 2/2^n (so never below 0.05 with n < 6 seeds);
- the minimum detectable effect of that test at the strictest Holm level (alpha / number of claims);
- a verdict: *supported* (adjusted p < alpha, in the paper's direction), *contradicted* (adjusted p < alpha,
  against it), else *inconclusive at this power* with the MDE;
- the cost side: NoP at the study's size (the runs' tags) and at the paper's 256 px (``spec_nop``), training and
  sampling throughput of the same variants from the benchmark records;
- the difference at every periodic evaluation (does the ranking hold across budgets?), a curves figure, and the
  sample grids of one seed per row (the same captions and noise in every run: ``dfgan.train.samples.SampleGrid``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from dfgan.experiment import resolve_spec, spec_nop
from dfgan.metrics.names import arrow, higher_is_better
from dfgan.reports.benchmarks import fastest_of_variant, round_spread, same_generator, variant_records
from dfgan.reports.collect import StudyData, metric_history
from dfgan.reports.figures import paired_curves
from dfgan.reports.samples import sample_grids
from dfgan.reports.stats import (
    ALPHA,
    CONFIDENCE,
    FOOTING_NOTE,
    POWER,
    Diff,
    compare,
    footings,
    holm,
    mde,
    one_footing,
    seed_values,
    welch_interval,
)
from dfgan.reports.tables import Table, fmt, fmt_count, fmt_diff

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive at this power"
PAPER_SIZE = ["model.nf=32", "data.imsize=256"]  # the NoP of reports/nop_variants.md (DF-GAN on CUB, 256 px)
THROUGHPUT_KINDS = {"train_step": "training", "sampling_variant": "sampling"}  # benchmark kind -> column


@dataclass
class ClaimTest:
    key: str
    statement: str
    paper: str
    arm: str
    metric: str
    diff: Diff | None  # paper - arm, oriented: > 0 is in the paper's favour
    p: float | None = None  # the t test matching the interval (paired t, or Welch)
    p_holm: float | None = None
    mde: float | None = None  # at the strictest Holm level, 80% power
    verdict: str = INCONCLUSIVE
    unpaired: list[str] = field(default_factory=list)  # "row seed N": finished, its pair not yet: not in the test
    off_footing: dict[int, str] = field(default_factory=dict)  # seed -> "fp32 vs bf16": not a pair, not in the test


@dataclass
class ClaimsPart:
    tables: list[Table] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---- the test and the verdict ------------------------------------------------------------------------------------
def orientation(metric: str) -> int:
    """+1 where higher is better, -1 where lower is better; unknown direction: +1 (said in the notes)."""
    return -1 if higher_is_better(metric) is False else 1


def _oriented(d: Diff, sign: int) -> Diff:
    if sign > 0:
        return d
    lo, hi = (None, None) if d.lo is None else (-d.hi, -d.lo)
    return replace(d, diff=-d.diff, lo=lo, hi=hi)


def common_seeds(paper: dict[int, float], arm: dict[int, float]) -> tuple[dict, dict, list[tuple[str, int]]]:
    """The claims are a paired design (each arm beside ``full`` at the same seeds): with at least one seed in
    common, only the common seeds are compared, and the seeds of one row alone (a study part-way through, whose
    pair has not finished yet) are returned as ("paper"/"arm", seed) to be named, not mixed in as a Welch test
    over unequal groups. No seed in common: both as they are (Welch)."""
    common = set(paper) & set(arm)
    if not common or set(paper) == set(arm):
        return paper, arm, []
    alone = [("paper", s) for s in sorted(set(paper) - common)] + [("arm", s) for s in sorted(set(arm) - common)]
    return {s: paper[s] for s in sorted(common)}, {s: arm[s] for s in sorted(common)}, alone


def t_test(paper: dict[int, float], arm: dict[int, float], sign: int = 1) -> tuple[Diff, float | None, float, float]:
    """Oriented difference paper - arm with its t interval, and the p, standard error and df of the t test that
    the interval comes from (paired over the common seeds, see ``common_seeds``; Welch when there are none)."""
    paper, arm, _ = common_seeds(paper, arm)
    d = compare(paper, arm)
    if d.lo is None:
        return _oriented(d, sign), None, math.nan, math.nan
    if d.paired:
        x = np.array([paper[s] - arm[s] for s in sorted(paper)])
        se, df = float(x.std(ddof=1) / math.sqrt(len(x))), float(len(x) - 1)
        p = (0.0 if d.diff != 0 else 1.0) if se == 0 else float(2 * stats.t.sf(abs(d.diff) / se, df))
    else:
        *_, se, df = welch_interval(np.array(list(paper.values())), np.array(list(arm.values())))
        se, df, p = float(se), float(df), d.p
    return _oriented(d, sign), p, se, df


def verdict(diff: float, p_adjusted: float | None, alpha: float = ALPHA) -> str:
    if p_adjusted is None or not math.isfinite(diff):
        return INCONCLUSIVE
    if p_adjusted < alpha:
        return SUPPORTED if diff > 0 else CONTRADICTED
    return INCONCLUSIVE


def judge(pairs: dict[str, tuple[dict[int, float], dict[int, float], int]], alpha: float = ALPHA
          ) -> dict[str, tuple[Diff | None, float | None, float | None, float | None, str]]:
    """key -> (paper seeds, arm seeds, orientation) to key -> (oriented Diff, t p, Holm p, MDE, verdict); Holm
    and the MDE's level (alpha / number of tests) count the claims that have a test."""
    tests = {k: t_test(a, b, s) for k, (a, b, s) in pairs.items()}
    keys = list(tests)
    adjusted = dict(zip(keys, holm([tests[k][1] for k in keys]), strict=True))
    m = max(1, sum(tests[k][1] is not None for k in keys))
    out = {}
    for k, (d, p, se, df) in tests.items():
        md = mde(se, df, alpha=alpha / m, power=POWER) if p is not None else None
        out[k] = (d, p, adjusted[k], md, verdict(d.diff, adjusted[k], alpha))
    return out


def claim_tests(data: StudyData, definition, primary: str) -> list[ClaimTest]:
    claims = definition.claims
    pairs, meta, off = {}, {}, {}
    foot = footings(data.cells)
    for key, c in claims.items():
        metric = c.metric or primary
        paper = c.paper or definition.reference
        vals = seed_values(data.cells, f"metrics.{metric}") if f"metrics.{metric}" in data.cells else {}
        meta[key] = (c.statement, paper, c.arm, metric)
        if paper in vals and c.arm in vals:
            a, b, off[key] = one_footing(vals[paper], vals[c.arm], foot.get(paper), foot.get(c.arm))
            if a and b:
                pairs[key] = (a, b, orientation(metric))
    judged = judge(pairs)
    out = []
    for key, (statement, paper, arm, metric) in meta.items():
        if key in judged:
            d, p, ph, md, v = judged[key]
            alone = common_seeds(pairs[key][0], pairs[key][1])[2]
            out.append(ClaimTest(key, statement, paper, arm, metric, d, p, ph, md, v,
                                 [f"{paper if who == 'paper' else arm} seed {s}" for who, s in alone], off[key]))
        else:
            out.append(ClaimTest(key, statement, paper, arm, metric, None, off_footing=off.get(key, {})))
    return out


# ---- tables ------------------------------------------------------------------------------------------------------
def _fmt_ci(d: Diff | None) -> str:
    return fmt_diff(d, missing="no finished runs of both rows", no_interval=None, mark=False)


def table_claims(tests: list[ClaimTest], study: str) -> Table:
    rows = []
    for t in tests:
        d = t.diff
        n = "–" if d is None else (str(d.n) if d.paired else f"{d.n}+{d.n_other}")
        flip = "–" if d is None or d.p is None or not d.paired else f"{fmt(d.p, 3)} (min {fmt(d.p_min, 3)})"
        verdict_text = t.verdict + (f" (MDE {fmt(t.mde, 2)})" if t.verdict == INCONCLUSIVE and t.mde else "")
        rows.append({"claim": t.key, "statement": t.statement, "paper vs arm": f"{t.paper} vs {t.arm}",
                     "metric": f"{t.metric}{arrow(t.metric)}", "n": n,
                     "Δ in the paper's favour [95% CI]": _fmt_ci(d),
                     "t-test p (Holm)": "–" if t.p is None else f"{fmt(t.p, 3)} ({fmt(t.p_holm, 3)})",
                     "sign-flip p": flip, "MDE": fmt(t.mde, 2), "verdict": verdict_text})
    m = sum(t.p is not None for t in tests)
    unknown = sorted({t.metric for t in tests if higher_is_better(t.metric) is None})
    notes = [
        "Δ = paper row - arm row, per seed over the seeds both rows ran (paired: same data order, same noise per "
        "step; Welch only where they have no seed in common), with the sign flipped for lower-is-better metrics, "
        "so Δ > 0 is always in "
        f"the paper's favour. {int(CONFIDENCE * 100)}% Student-t interval of the mean Δ, each on its own.",
        "Verdict: from the t test whose interval is shown (paired t; Welch where no seed is common), Holm-adjusted "
        + (f"across the {m} claim(s) of this table that have a test" if m else
           "across the claims that have a test (none yet: a test needs at least 2 seeds of both rows)")
        + f": {SUPPORTED} = adjusted p < {ALPHA:.2g} and Δ > 0; {CONTRADICTED} "
        f"= adjusted p < {ALPHA:.2g} and Δ < 0; otherwise {INCONCLUSIVE}, with the MDE: the true Δ this test "
        f"finds with {POWER:.0%} power at the strictest Holm level ({ALPHA:.2g}/{max(m, 1)}) and the observed seed "
        "SD. An inconclusive claim is not evidence that the rows are equal. The t test assumes roughly normal "
        "seed noise; an interval that excludes 0 may still read inconclusive, the adjusted p counting the claims "
        "together.",
        "Sign-flip p: exact permutation p over all 2^n sign flips of the per-seed Δ (no normality assumed), shown "
        "beside as a check, not used for the verdict: with n seeds it cannot go below 2/2^n (n = 5: 0.0625), so "
        "below 6 seeds it can never reach 0.05, and below 8 never the Holm level of 4 claims.",
        f"Rows and runs: `dfgan report --study {study}`; the study's own table of differences has the same Δ "
        "unoriented."]
    unpaired = sorted({u for t in tests for u in t.unpaired})
    if unpaired:
        notes.append("Paired over the seeds both rows have: finished cells whose pair has not finished yet are left "
                     f"out of the test until it has ({', '.join(unpaired)}).")
    off = [f"{t.key} seed {s} ({f})" for t in tests for s, f in t.off_footing.items()]
    if off:
        notes.append(FOOTING_NOTE + " Left out here: " + "; ".join(off) + ".")
    if unknown:
        notes.append(f"Direction unknown for {', '.join(unknown)}: taken as higher is better.")
    return Table("claims", "The paper's claims: paired differences and verdicts", pd.DataFrame(rows), notes)


def _nop_paper_size(variant: str) -> int | None:
    try:
        return int(spec_nop(resolve_spec(variant, overrides=PAPER_SIZE))["totals"]["trainable"]["count"])
    except Exception:  # a row that is not a named variant (a factorial crossing): no NoP at the paper's size
        return None


def _pair(a, b, fmt_one) -> str:
    if a is None or b is None:
        return "–"
    ratio = f" ({a / b:.2f}x)" if b else ""
    return f"{fmt_one(a)} vs {fmt_one(b)}{ratio}"


def table_cost(tests: list[ClaimTest], data: StudyData, bench_file: str | None, dtype: str,
               bench_note: str = "") -> Table:
    records = variant_records(bench_file, THROUGHPUT_KINDS)
    cells = data.cells
    shared: set[str] = set()

    def first(row: str, col: str):
        v = cells.loc[cells["variant"] == row, col].dropna() if col in cells else pd.Series(dtype=object)
        return v.iloc[0] if len(v) else None

    def base(row: str) -> str:
        return first(row, "tags.base_variant") or row

    nop256 = {r: _nop_paper_size(base(r)) for r in {x for t in tests for x in (t.paper, t.arm)}}
    rows, sizes, spreads = [], set(), []
    for t in tests:
        row = {"claim": t.key, "paper vs arm": f"{t.paper} vs {t.arm}"}
        study_nop = [pd.to_numeric(first(r, "tags.nop_trainable"), errors="coerce") for r in (t.paper, t.arm)]
        study_nop = [None if v is None or not math.isfinite(v) else int(v) for v in study_nop]
        row["NoP, study size"] = _pair(*study_nop, fmt_count)
        row["NoP, 256 px nf 32"] = _pair(nop256[t.paper], nop256[t.arm], fmt_count)
        for kind, label in THROUGHPUT_KINDS.items():
            a, b = (fastest_of_variant(records, kind, base(r), dtype) for r in (t.paper, t.arm))
            if a and b and kind == "sampling_variant" and same_generator(a, b):  # e.g. full and no_magp: one G
                shared.add(t.key)
                row[f"{label} img/s"] = f"same generator ({a['images_per_s']:.3g}, {b['images_per_s']:.3g})"
            else:
                row[f"{label} img/s"] = _pair(a and a["images_per_s"], b and b["images_per_s"], lambda v: f"{v:.3g}")
            for r in filter(None, (a, b)):
                spreads += filter(None, [round_spread(r)])
                sizes.add(f"{label}: {r.get('imsize')} px, nf {r.get('nf')}, batch {r.get('batch')}, "
                              f"{r.get('dtype')}, {r.get('device')}, {r.get('threads')} threads")
        rows.append(row)
    notes = ["Each cell: paper row vs arm row (ratio paper/arm). NoP = trainable parameters (G + D + heads; the "
             "frozen text encoder excluded): at the study's size from the runs' tag nop_trainable, and at 256 px, "
             "nf = 32 (DF-GAN's CUB size, the numbers of reports/nop_variants.md) from dfgan.experiment.spec_nop."]
    if records:
        notes.append(f"Throughput from {bench_file}, the benchmark records of the same named variants (training: "
                     "one G + D step with the row's regulariser and head; sampling: generator forward passes), "
                     f"preferring {dtype}; measured by the benchmarks, not in these runs, at: "
                     + "; ".join(sorted(sizes)) + ". Higher is cheaper.")
        if spreads:
            worst, rounds = max(spreads)[0], sorted({n for _, n in spreads})
            notes.append(f"Each throughput is the benchmark's median over its rounds ({'/'.join(map(str, rounds))} "
                         f"per record); within one record the slowest round took up to {worst:.0%} longer than the "
                         f"fastest, so a ratio between about {1 / (1 + worst):.2f}x and {1 + worst:.2f}x is within "
                         "the benchmark's own noise, not a measured difference.")
        if shared:
            notes.append(f"Sampling in {', '.join(sorted(shared))}: both rows have the same generator (backbone, "
                         "fusion and FLOP count), so their sampling cost is one and the same; the two numbers are "
                         "two measurements of it and their gap is the benchmark's run-to-run spread, not a ratio.")
        if bench_note:
            notes.append(bench_note)  # which commit and machine measured them, and whether that is the runs' code
    else:
        notes.append("Throughput: no benchmark record with named variants (reports/<study>/benchmarks.json or "
                     "reports/benchmarks.json; `nox -s benchmark` writes it): not shown.")
    return Table("claims_cost", "The cost side of each claim", pd.DataFrame(rows), notes)


# ---- budgets -----------------------------------------------------------------------------------------------------
def budget_history(data: StudyData, tests: list[ClaimTest]) -> pd.DataFrame:
    """Long table (variant, seed, metric, step, value): the last value per run and step of each claim's metric."""
    metrics = sorted({t.metric for t in tests})
    hist = metric_history(data, metrics)
    return hist.drop_duplicates(subset=["run_id", "metric", "step"], keep="last")


def table_budgets(tests: list[ClaimTest], hist: pd.DataFrame) -> Table:
    steps = sorted(hist["step"].unique()) if len(hist) else []
    rows = []
    for t in tests:
        row: dict[str, str] = {"claim": t.key, "paper vs arm": f"{t.paper} vs {t.arm}"}
        signs = []
        h = hist[hist["metric"] == t.metric]
        for step in steps:
            at = h[h["step"] == step]
            a, b = ({s: v for s, v in _by_seed(at[at["variant"] == r]).items() if s not in t.off_footing}
                    for r in (t.paper, t.arm))
            if not a or not b:
                row[f"step {step}"] = "–"
                continue
            if not set(a) & set(b):  # a paired design: two cells of different seeds are not a comparison
                row[f"step {step}"] = f"no seed in common ({_seeds(a)} vs {_seeds(b)})"
                continue
            d, *_ = t_test(a, b, orientation(t.metric))
            signs.append(np.sign(d.diff))
            row[f"step {step}"] = _fmt_ci(d)
        row["same sign at every step"] = ("–" if not signs else "one step compared" if len(signs) == 1
                                          else "yes" if len(set(signs)) == 1 else "no")
        rows.append(row)
    notes = ["Δ in the paper's favour (as in the claims table) at each evaluation step of the runs (the periodic "
             "evaluations and the final one), with its 95% t interval over the seeds both rows evaluated at that "
             "step (none in common: no Δ; a seed whose two cells trained in different precisions is left out, as in "
             "the claims table); no multiplicity adjustment: this table shows whether the ranking holds "
             "across budgets, the verdicts are in the claims table."]
    return Table("claims_budgets", "Does the ranking hold across budgets?", pd.DataFrame(rows), notes)


def _seeds(by_seed: dict[int, float]) -> str:
    return "seed" + ("s " if len(by_seed) > 1 else " ") + ", ".join(str(k) for k in sorted(by_seed))


def _by_seed(rows: pd.DataFrame) -> dict[int, float]:
    return {int(s): float(v) for s, v in zip(rows["seed"], rows["value"], strict=True)}


# ---- the part of the report --------------------------------------------------------------------------------------
def claims_report(data: StudyData, definition, primary: str, folder: Path, bench_file: str | None,
                  dtype: str = "float32", bench_note: str = "") -> ClaimsPart:
    """Tables (claims, cost, budgets), the curves figure and the sample grids of ``definition.claims``."""
    part = ClaimsPart()
    tests = claim_tests(data, definition, primary)
    part.tables.append(table_claims(tests, data.study))
    part.tables.append(table_cost(tests, data, bench_file, dtype, bench_note))
    hist = budget_history(data, tests)
    part.tables.append(table_budgets(tests, hist))
    if len(hist):
        panels = [(t.key, t.metric, t.paper, t.arm) for t in tests]
        part.files.append(paired_curves(panels, hist, folder / "figures" / "claims_curves.png"))
    rows = list(dict.fromkeys(r for t in tests for r in (t.paper, t.arm)))
    grids, missing = sample_grids(data, rows, folder / "figures")
    part.files += grids
    if grids:
        part.notes.append("Sample grids (figures/samples_<row>_seed<seed>.png): the last step of one seed per row; "
                          "every run renders the same captions with the same noise (dfgan.train.samples.SampleGrid).")
    if missing:
        part.notes.append("No sample grid for: " + "; ".join(missing))
    return part
