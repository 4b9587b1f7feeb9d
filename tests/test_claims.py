"""The claims report: the verdict logic on synthetic paired data (a clear effect, a reversed one, noise, a lower-is-
better metric, Holm across claims), and the report end to end on a synthetic `claims` study logged to MLflow
without training (verdicts, cost side, budgets, curves, sample grids)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from scipy import stats

from dfgan.reports.build import build_report
from dfgan.reports.claims import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    ClaimTest,
    claim_tests,
    common_seeds,
    judge,
    orientation,
    t_test,
    table_budgets,
    table_claims,
)
from dfgan.reports.figures import paired_curves
from dfgan.reports.stats import mde
from dfgan.reports.tables import _difference_notes
from dfgan.studies.definition import load_study_definition
from tests.test_report import _log

SEEDS = (100, 101, 102, 103, 104)


def _seeds(values) -> dict[int, float]:
    return dict(zip(SEEDS, (float(v) for v in values), strict=True))


# ---- the verdict -----------------------------------------------------------------------------------------------
def test_verdicts_on_synthetic_pairs():
    rng = np.random.default_rng(0)
    base = rng.normal(0.6, 0.05, 5)  # seed-to-seed spread, shared by both rows of a pair (paired by seed)
    pairs = {
        "clear": (_seeds(base + 0.10 + rng.normal(0, 0.005, 5)), _seeds(base), 1),
        "reversed": (_seeds(base - 0.10 + rng.normal(0, 0.005, 5)), _seeds(base), 1),
        "noise": (_seeds(base + rng.normal(0, 0.05, 5)), _seeds(base), 1),
        "lower_better": (_seeds(base - 0.2 + rng.normal(0, 0.005, 5)), _seeds(base), orientation("fd_attr")),
    }
    out = judge(pairs)
    verdicts = {k: v[4] for k, v in out.items()}
    assert verdicts == {"clear": SUPPORTED, "reversed": CONTRADICTED, "noise": INCONCLUSIVE,
                        "lower_better": SUPPORTED}
    d, p, p_holm, m, _ = out["clear"]
    x = np.array([pairs["clear"][0][s] - pairs["clear"][1][s] for s in SEEDS])
    assert d.diff == pytest.approx(x.mean()) and d.paired and d.n == 5
    assert p == pytest.approx(stats.ttest_1samp(x, 0).pvalue)  # the paired t test of the shown interval
    assert d.lo > 0 and p_holm >= p
    # the sign-flip p is beside it and cannot go below 2/2^5 with 5 seeds, however clear the effect
    assert d.p == pytest.approx(2 / 32) and d.p_min == pytest.approx(2 / 32)
    # reversed: oriented against the paper, interval below 0
    assert out["reversed"][0].hi < 0
    # lower is better (fd_attr): the paper's row is lower, the oriented difference is positive
    assert orientation("fd_attr") == -1 and out["lower_better"][0].diff == pytest.approx(0.2, abs=0.01)
    # noise: the MDE of the t test at the strictest Holm level (alpha / 4 claims), observed SD
    dn, pn, _, mn, _ = out["noise"]
    xn = np.array([pairs["noise"][0][s] - pairs["noise"][1][s] for s in SEEDS])
    assert mn == pytest.approx(mde(xn.std(ddof=1) / math.sqrt(5), 4, alpha=0.05 / 4))
    assert mn > abs(dn.diff) and pn > 0.05


def test_holm_across_claims_and_too_few_seeds():
    d = np.array([0.2, 0.5, 0.0, 0.4, 0.3])
    raw = stats.ttest_1samp(d, 0).pvalue
    assert 0.05 / 3 < raw < 0.05  # significant alone, not after Holm over three such claims
    one = {"a": (_seeds(0.5 + d), _seeds(np.full(5, 0.5)), 1)}
    assert judge(one)["a"][4] == SUPPORTED
    three = {k: v for k in "abc" for v in one.values()}
    assert {v[4] for v in judge(three).values()} == {INCONCLUSIVE}
    assert judge(three)["a"][2] == pytest.approx(min(1.0, 3 * raw))
    # one seed: no interval, no test, inconclusive (never supported by a single pair)
    single = judge({"a": ({100: 0.9}, {100: 0.1}, 1)})["a"]
    assert single[0].lo is None and single[1] is None and single[4] == INCONCLUSIVE
    # different seeds: Welch, its own p
    dw, pw, *_ = t_test(_seeds([0.9, 0.91, 0.92, 0.9, 0.93]), {1: 0.5, 2: 0.52, 3: 0.49}, 1)
    assert not dw.paired and pw == pytest.approx(dw.p) and pw < 0.05
    # a study part-way through (full has seeds whose arm has not finished): paired over the common seeds, the
    # others named in the table, never a Welch test of unequal groups that ignores the pairing
    paper, arm = _seeds([0.9, 0.91, 0.92, 0.9, 0.93]), {100: 0.8, 101: 0.85}
    dp, pp, *_ = t_test(paper, arm, 1)
    assert dp.paired and dp.n == 2 and dp.diff == pytest.approx(((0.9 - 0.8) + (0.91 - 0.85)) / 2)
    assert pp == pytest.approx(stats.ttest_1samp([0.1, 0.06], 0).pvalue)
    assert common_seeds(paper, arm)[2] == [("paper", 102), ("paper", 103), ("paper", 104)]
    test = ClaimTest("k", "s", "full", "stacked", "attr_acc", dp, pp, pp, None, INCONCLUSIVE,
                     ["full seed 102", "full seed 103"])
    assert any("left out of the test until it has (full seed 102, full seed 103)" in n
               for n in table_claims([test], "claims").notes)


# ---- the report end to end ------------------------------------------------------------------------------------
# final attr_acc per seed around 0.7 with a shared seed effect; stacked clearly worse, two_way clearly better,
# no_magp noise, cross_attention worse at the end but not at the first evaluation
SEED_EFFECT = np.array([0.0, 0.03, -0.02, 0.01, -0.03])
SHIFT = {"full": 0.0, "stacked": -0.15, "two_way": 0.08, "no_magp": None, "cross_attention": -0.1}
STEPS = (1500, 3000, 4500, 6000)


def _final(variant: str) -> np.ndarray:
    noise = np.random.default_rng(list(SHIFT).index(variant)).normal(0, 0.01, 5)  # each row its own
    return 0.7 + SEED_EFFECT + (SHIFT[variant] or 0.0) + noise


@pytest.fixture(scope="module")
def claims_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("claims")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("claims", artifact_location=(tmp / "art").as_uri())
    nop = {"full": 100_000, "stacked": 200_000, "two_way": 100_100, "no_magp": 100_000, "cross_attention": 150_000}
    colours = {"full": (0, 0, 255), "stacked": (255, 0, 0)}
    for variant in SHIFT:
        for seed, final in zip(SEEDS, _final(variant), strict=True):
            hist = {s: final * (0.7 + 0.1 * i) for i, s in enumerate(STEPS)}
            if variant == "cross_attention":
                hist[1500] = 0.9 * 0.7  # better than full early on: the ranking flips with the budget
            tags = {"role": "cell", "study": "claims", "study_kind": "grid", "variant": variant, "seed": seed,
                    "base_variant": variant, "spec_hash": f"h{variant}{seed}", "nop_trainable": nop[variant],
                    "overrides": "eval.interval=1500", "git_commit": "abc"}
            params = {"data.imsize": 32, "model.nf": 4, "train.out_dir": str(tmp / "runs"), "name": variant}
            run_id = _log(client, exp, tags, {"attr_acc": hist, "fd_attr": {6000: 5.0}}, params)
            if seed == 100 and variant in colours:  # a grid in the run folder (the artifact path: two_way below)
                folder = tmp / "runs" / f"{variant}-h{variant}{seed}" / "samples"
                folder.mkdir(parents=True)
                for step in (250, 6000):
                    Image.new("RGB", (8, 8), colours[variant] if step == 6000 else (0, 0, 0)).save(
                        folder / f"step_{step:07d}.png")
            if seed == 100 and variant == "two_way":
                art = tmp / "step_0006000.png"
                Image.new("RGB", (8, 8), (0, 255, 0)).save(art)
                client.log_artifact(run_id, str(art), "samples")
    bench = tmp / "benchmarks.json"
    gen = {"stacked": ("stacked", "dfblock", 2.0), "cross_attention": ("one_stage", "cross_attention", 1.5)}
    recs = [{"kind": k, "variant": v, "imsize": 64, "nf": 32, "batch": 8, "dtype": "float32", "device": "cpu",
             "threads": 2, "images_per_s": s * (2 if k == "sampling_variant" else 1),
             **dict(zip(("backbone", "fusion", "gflop_per_image"), gen.get(v, ("one_stage", "dfblock", 1.0)),
                        strict=True))}
            for k in ("train_step", "sampling_variant") for v, s in
            (("full", 28.0), ("stacked", 14.0), ("two_way", 27.0), ("no_magp", 38.0), ("cross_attention", 18.0))]
    stats = [{"min": 1.0, "max": 1.0 + 0.1 * (i == 3), "rounds": 3} for i in range(len(recs))]  # no_magp: 10%
    bench.write_text(json.dumps({"benchmarks": [{"name": f"b{i}", "extra_info": r, "stats": st}
                                                for i, (r, st) in enumerate(zip(recs, stats, strict=True))],
                                 "commit_info": {"id": "def" * 13 + "d", "dirty": False},  # not the runs' "abc"
                                 "machine_info": {"cpu": {"brand_raw": "Test CPU"}}, "datetime": "2026-11-28T11:55"}))
    rep = build_report("claims", tracking_uri=uri, out_dir=tmp / "reports", benchmarks=str(bench), n_boot=200)
    return {"rep": rep, "tmp": tmp}


def test_claims_report_verdicts_and_numbers(claims_study):
    rep = claims_study["rep"]
    t = rep.tables["claims"].frame.set_index("claim")
    assert list(t.index) == list(load_study_definition("claims").claims)  # the study file's four claims
    assert t.loc["one_stage", "verdict"] == SUPPORTED and t.loc["dfblock", "verdict"] == SUPPORTED
    assert t.loc["one_way", "verdict"] == CONTRADICTED  # two_way better here: said so, not hidden
    assert t.loc["ma_gp", "verdict"].startswith(f"{INCONCLUSIVE} (MDE ")
    d = _final("full") - _final("stacked")
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert t.loc["one_stage", "Δ in the paper's favour [95% CI]"] == \
        f"{d.mean():+.3g} [{d.mean() - half:+.3g}, {d.mean() + half:+.3g}]"
    assert t.loc["one_stage", "n"] == "5" and t.loc["one_stage", "sign-flip p"] == "0.0625 (min 0.0625)"
    reversed_mean = (_final("full") - _final("two_way")).mean()
    assert t.loc["one_way", "Δ in the paper's favour [95% CI]"].startswith(f"{reversed_mean:+.3g} [-")
    notes = " ".join(rep.tables["claims"].notes)
    assert "Holm-adjusted across the 4 claim(s) of this table that have a test" in notes
    assert "can never reach 0.05" in notes

    cost = rep.tables["claims_cost"].frame.set_index("claim")
    assert cost.loc["one_stage", "NoP, study size"] == "100,000 vs 200,000 (0.50x)"
    assert cost.loc["dfblock", "NoP, 256 px nf 32"] == "16.46M vs 22.06M (0.75x)"  # reports/nop_variants.md
    assert cost.loc["dfblock", "training img/s"] == "28 vs 18 (1.56x)"
    assert cost.loc["dfblock", "sampling img/s"] == "56 vs 36 (1.56x)"
    # full and no_magp share one generator: two measurements of one cost, not a ratio
    assert cost.loc["ma_gp", "sampling img/s"] == "same generator (56, 76)"
    assert cost.loc["ma_gp", "training img/s"] == "28 vs 38 (0.74x)"
    # measured on other code than the runs imported: the cost table says so beside the numbers, and provenance too
    cost_notes = " ".join(rep.tables["claims_cost"].notes)
    assert "Sampling in ma_gp, one_way: both rows have the same generator" in cost_notes
    assert "median over its rounds (3 per record)" in cost_notes  # the spread of no_magp's training rounds
    assert "up to 10% longer than the fastest, so a ratio between about 0.91x and 1.10x" in cost_notes
    assert "commit defdefdefdef, Test CPU, 2026-11-28; NOT the code the runs imported (abc)" in cost_notes
    prov = json.loads((rep.folder / "provenance.json").read_text())
    assert prov["benchmarks"]["commit"] == "def" * 13 + "d" and prov["benchmarks"]["cpu"] == "Test CPU"

    bud = rep.tables["claims_budgets"].frame.set_index("claim")
    assert [c for c in bud.columns if c.startswith("step")] == [f"step {s}" for s in STEPS]
    assert bud.loc["one_stage", "same sign at every step"] == "yes"
    assert bud.loc["dfblock", "same sign at every step"] == "no" and bud.loc["dfblock", "step 1500"].startswith("-")


def test_claims_report_files(claims_study):
    rep, folder = claims_study["rep"], claims_study["rep"].folder
    for key in ("claims", "claims_cost", "claims_budgets"):
        assert (folder / f"{key}.md").is_file() and r"\toprule" in (folder / f"{key}.tex").read_text()
    assert (folder / "figures" / "claims_curves.png").stat().st_size > 10_000
    # the last step's grid of seed 100 per row: from the run folder, else from the MLflow artifacts
    assert Image.open(folder / "figures" / "samples_full_seed100.png").getpixel((0, 0)) == (0, 0, 255)
    assert Image.open(folder / "figures" / "samples_stacked_seed100.png").getpixel((0, 0)) == (255, 0, 0)
    assert Image.open(folder / "figures" / "samples_two_way_seed100.png").getpixel((0, 0)) == (0, 255, 0)
    assert any("No sample grid for: no_magp (seed 100)" in n for n in rep.notes)
    readme = (folder / "README.md").read_text()
    assert "The paper's claims: paired differences and verdicts" in readme and "samples_full_seed100" in readme


def test_benchmark_record_choice_and_its_commit(tmp_path, monkeypatch):
    """The study's own record (reports/<study>/benchmarks.json) before that of a study sharing its cells, before
    the project's; a record of the runs' commit reads as such, a dirty or unrecorded one does not."""
    from dfgan.reports.benchmarks import choose_bench_file, origin_note, record_origin

    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports" / "claims").mkdir(parents=True)
    assert choose_bench_file(None, tmp_path / "reports" / "claims") is None
    project = tmp_path / "reports" / "benchmarks.json"
    project.write_text(json.dumps({"benchmarks": [], "commit_info": {"id": "a" * 40, "dirty": False}}))
    assert choose_bench_file(None, tmp_path / "reports" / "claims").resolve() == project
    mates = [tmp_path / "reports" / "cumulative", tmp_path / "reports" / "questions"]
    mates[1].mkdir()
    (mates[1] / "benchmarks.json").write_text(project.read_text())
    assert choose_bench_file(None, tmp_path / "reports" / "claims", mates) == mates[1] / "benchmarks.json"
    own = tmp_path / "reports" / "claims" / "benchmarks.json"
    own.write_text(json.dumps({"benchmarks": [], "commit_info": {"id": "b" * 40, "dirty": False}}))
    assert choose_bench_file(None, tmp_path / "reports" / "claims") == own
    assert choose_bench_file(None, tmp_path / "reports" / "claims", mates) == own
    assert choose_bench_file("x.json", own.parent) == Path("x.json")  # named: that one, present or not
    assert origin_note(record_origin(own), ["b" * 40]).endswith("the same commit the runs imported.")
    assert "NOT the code the runs imported" in origin_note(record_origin(own), ["b" * 40, "c" * 40])
    assert "(bbbbbbbbbbbb-dirty)" in origin_note(record_origin(own), ["b" * 40 + "-dirty"])
    own.write_text(json.dumps({"benchmarks": [], "commit_info": {"id": "b" * 40, "dirty": True}}))
    assert "(uncommitted changes)" in origin_note(record_origin(own), ["b" * 40])
    assert "NOT the code" in origin_note(record_origin(own), ["b" * 40])
    own.write_text(json.dumps([]))  # a bare list of records: no commit to compare
    assert "no commit recorded" in origin_note(record_origin(own), ["b" * 40])
    assert record_origin(tmp_path / "missing.json") is None and origin_note(None, []) == ""


def test_claims_must_name_rows_of_the_study():
    from pydantic import ValidationError

    from dfgan.studies.definition import StudyDefinition

    ok = StudyDefinition(name="s", variants=["full", "no_magp"], claims={"m": {"arm": "no_magp", "statement": "x"}})
    assert ok.claims["m"].paper is None  # the reference (full) is the paper's row
    with pytest.raises(ValidationError, match="claims.m: row 'stacked' is not a cell"):
        StudyDefinition(name="s", variants=["full", "no_magp"], claims={"m": {"arm": "stacked", "statement": "x"}})


def test_curves_of_a_study_part_way_through(tmp_path):
    """An arm with no finished cell yet (only the reference has run) still gives the figure, not an error."""
    import pandas as pd

    hist = pd.DataFrame({"variant": ["full"] * 4, "seed": [100] * 4, "metric": ["attr_acc"] * 4,
                         "step": [1500, 3000, 4500, 6000], "value": [0.5, 0.7, 0.8, 0.9], "run_id": ["r"] * 4})
    assert paired_curves([("one_stage", "attr_acc", "full", "stacked")], hist, tmp_path / "c.png").stat().st_size > 0


def test_notes_say_when_no_claim_has_a_test_yet():
    """One seed per arm (a study's first cells): the notes say no claim has a test, not 'across the 0 claims'."""
    tests = [ClaimTest(k, "s", "full", arm, "attr_acc", None) for k, arm in [("a", "stacked"), ("b", "two_way")]]
    notes = " ".join(table_claims(tests, "claims").notes)
    assert "none yet: a test needs at least 2 seeds of both rows" in notes and "across the 0" not in notes
    diff_notes = " ".join(_difference_notes([], 0, ["attr_acc"], "full", "attr_acc (higher is better)", False,
                                            "t"))
    assert "Holm p: no test yet" in diff_notes and "over the 0 distinct tests" not in diff_notes


def test_budgets_compare_only_seeds_both_rows_evaluated():
    """Per step, a paired design compares the seeds both rows have at that step; two single cells of different
    seeds (an arm restored without its periodic evaluations) give no Δ, and the table says which seeds each has."""
    import pandas as pd

    rows = [("full", 102, 1500, 0.60), ("stacked", 101, 1500, 0.70),  # no common seed at 1500
            ("full", 101, 3000, 0.80), ("full", 102, 3000, 0.70), ("stacked", 101, 3000, 0.75),
            ("stacked", 102, 3000, 0.60)]
    hist = pd.DataFrame(rows, columns=["variant", "seed", "step", "value"]).assign(metric="attr_acc", run_id="r")
    t = ClaimTest("one_stage", "s", "full", "stacked", "attr_acc", None)
    row = table_budgets([t], hist).frame.iloc[0]
    assert row["step 1500"] == "no seed in common (seed 102 vs seed 101)"
    assert row["step 3000"].startswith("+0.075 [")  # paired over 101 and 102: mean of +0.05 and +0.10
    assert row["same sign at every step"] == "one step compared"  # not a vacuous "yes"


def test_a_pair_is_one_seed_on_one_footing():
    """Two cells of one seed that trained in different precisions (train.precision=auto resolves per machine)
    are not a pair: the claim's test, the differences table and the budgets leave that seed out and name it;
    Table 1 says how many cells of each row trained in which precision. Without the tag nothing is left out."""
    from types import SimpleNamespace

    import pandas as pd

    from dfgan.reports.stats import differences
    from dfgan.reports.tables import table_differences, table_variants

    rows = []
    for v, base in (("full", 0.9), ("stacked", 0.8)):
        for i, seed in enumerate((100, 101, 102, 103)):
            odd = v == "stacked" and seed == 101  # another precision, far off: it would flip the sign
            rows.append({"variant": v, "seed": seed, "metrics.attr_acc": 2.0 if odd else base + 0.01 * i,
                         "tags.speed_precision": "bf16" if odd else "fp32"})
    cells = pd.DataFrame(rows)
    definition = load_study_definition("claims")
    test = next(t for t in claim_tests(SimpleNamespace(cells=cells), definition, "attr_acc") if t.key == "one_stage")
    assert test.diff.n == 3 and test.diff.paired and test.off_footing == {101: "fp32 vs bf16"}
    assert test.diff.diff == pytest.approx(0.1) and test.verdict == SUPPORTED
    notes = " ".join(table_claims([test], "claims").notes)
    assert "One footing:" in notes and "Left out here: one_stage seed 101 (fp32 vs bf16)." in notes
    d = differences(cells, "metrics.attr_acc", "full")["stacked"]
    assert d.n == 3 and d.diff == pytest.approx(-0.1) and d.note == "left out, two precisions: seed 101 (bf16 vs fp32)"
    assert d.off_footing == {101: "bf16 vs fp32"}
    diffs = table_differences(cells, ["full", "stacked"], ["attr_acc"], "full", "", key="d", title="d", n_boot=0)
    assert any(n.startswith("One footing:") for n in diffs.notes)
    assert not any(n.startswith("One footing:") for n in table_differences(
        cells[cells.seed != 101], ["full", "stacked"], ["attr_acc"], "full", "", key="d", title="d", n_boot=0).notes)
    hist = cells.rename(columns={"metrics.attr_acc": "value"}).assign(metric="attr_acc", step=6000)
    assert table_budgets([test], hist).frame.loc[0, "step 6000"].startswith("+0.1 [")
    t1 = table_variants(cells, ["full", "stacked"], ["attr_acc"], "attr_acc", {}, "").frame.set_index("variant")
    assert t1.loc["full", "precision"] == "fp32 ×4" and t1.loc["stacked", "precision"] == "fp32 ×3, bf16 ×1"

    untagged = cells.drop(columns="tags.speed_precision")
    assert differences(untagged, "metrics.attr_acc", "full")["stacked"].n == 4
    assert claim_tests(SimpleNamespace(cells=untagged), definition, "attr_acc")[0].off_footing == {}


def test_table1_sampling_prefers_the_runs_dtype_never_another_size():
    """Table 1's sampling column: the same generator at the study's size, in the runs' dtype where a record has
    it (even if slower), else in another (each number names its dtype); a record of another size never."""
    from dfgan.reports.benchmarks import throughput_for_rows

    def rec(dtype, speed, imsize=32, fusion="dfblock"):
        return {"backbone": "one_stage", "fusion": fusion, "imsize": imsize, "nf": 32, "dtype": dtype,
                "images_per_sec": speed}

    rows = {"full": {"backbone": "one_stage", "fusion": "dfblock"},
            "cross_attention": {"backbone": "one_stage", "fusion": "cross_attention"}}
    records = [rec("float32", 400.0), rec("bfloat16", 300.0), rec("float32", 900.0, imsize=64),
               rec("float32", 140.0, fusion="cross_attention")]
    got = throughput_for_rows(records, rows, 32, 32, "bfloat16")
    assert got["full"]["images_per_sec"] == 300.0  # the runs' dtype, though float32 is faster
    assert got["cross_attention"]["dtype"] == "float32"  # no bfloat16 record: the float32 one, named
    assert throughput_for_rows(records, rows, 32, 32, "float32")["full"]["images_per_sec"] == 400.0
    assert throughput_for_rows(records, rows, 128, 32, "float32") == {}  # never another size


def test_superseded_cells_beside_their_reruns(tmp_path):
    """A study folder's <name>/cells.jsonl (cells it trained again, e.g. on another footing) is read back beside
    the cells that replaced them: per pair both values, then the paired mean difference over the pairs; a cell not
    trained again yet is named as such."""
    import pandas as pd

    from dfgan.reports.reruns import earlier_exports, table_reruns
    from dfgan.studies.restore import ExportedCell

    old = [ExportedCell("full", 100, "h1", "r1", tags={"speed_precision": "fp32"}, metrics={"attr_acc": 0.90}),
           ExportedCell("stacked", 100, "h2", "r2", tags={"speed_precision": "fp32"}, metrics={"attr_acc": 0.95}),
           ExportedCell("full", 101, "h3", "r3", tags={"speed_precision": "fp32"}, metrics={"attr_acc": 0.88})]
    (tmp_path / "fp32_footing").mkdir()
    export = tmp_path / "fp32_footing" / "cells.jsonl"
    export.write_text("".join(c.to_json() + "\n" for c in old))
    (tmp_path / "figures").mkdir()
    assert earlier_exports(tmp_path) == [export]
    cells = pd.DataFrame([{"variant": "full", "seed": 100, "metrics.attr_acc": 0.93, "tags.speed_precision": "bf16"},
                          {"variant": "stacked", "seed": 100, "metrics.attr_acc": 0.96,
                           "tags.speed_precision": "bf16"},
                          {"variant": "stacked", "seed": 102, "metrics.attr_acc": 0.5}])
    t = table_reruns(export, cells, ["attr_acc"])
    assert t.key == "reruns_fp32_footing"
    f = t.frame.set_index(["variant", "seed"])
    col = "attr_acc ↑ earlier → rerun"
    assert f.loc[("full", 100), col] == "0.9 → 0.93" and f.loc[("full", 100), "footing (earlier → rerun)"] == \
        "fp32 → bf16"
    assert f.loc[("full", 101), "footing (earlier → rerun)"] == "fp32 → not trained again yet"
    assert f.loc[("full", 101), col] == "0.88 → –"
    summary = f.loc[("2 pair(s)", "")]
    d = np.array([0.93 - 0.90, 0.96 - 0.95])
    half = stats.t.ppf(0.975, 1) * d.std(ddof=1) / math.sqrt(2)
    assert summary[col].startswith(f"Δ {d.mean():+.3g} [{d.mean() - half:+.3g}, {d.mean() + half:+.3g}]; n 2, ")
    assert "p 0.5 (Holm 0.5)" in summary[col]  # Holm over the table's metrics: one here, so p itself
    export.write_text("")
    assert table_reruns(export, cells, ["attr_acc"]) is None
