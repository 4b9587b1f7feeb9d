"""Reports from MLflow: statistics (factorial effects; the differences' intervals are in test_stats.py) and the
generated tables, LaTeX, figures and provenance, on synthetic cell runs with known values (the end-to-end path
from a real tiny study is covered in test_studies.py)."""

from __future__ import annotations

import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from scipy import stats

from dfgan.metrics.names import choose_metric, quality_columns
from dfgan.reports.build import NoRunsError, build_report
from dfgan.reports.stats import factorial_effects
from dfgan.reports.tables import latex_escape

SEEDS = (100, 101, 102)
# final attr_acc per seed; 'worse' is clearly below full, 'same' differs from full by noise only
FINAL = {"full": (0.80, 0.82, 0.81), "worse": (0.50, 0.55, 0.52), "same": (0.81, 0.79, 0.83)}
NOISE_SD = {100: 0.004, 101: 0.006, 102: 0.008}  # SD between the noise draws of each run's final evaluation


def _log(client: MlflowClient, exp_id: str, tags: dict, metrics: dict[str, dict[int, float]],
         params: dict, status: str = "FINISHED") -> str:
    run = client.create_run(exp_id, tags={k: str(v) for k, v in tags.items()})
    now = int(time.time() * 1000)
    client.log_batch(run.info.run_id,
                     metrics=[Metric(k, v, now, s) for k, hist in metrics.items() for s, v in hist.items()],
                     params=[Param(k, str(v)) for k, v in params.items()])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _cell_tags(study, kind, variant, seed, parent):
    return {"role": "cell", "study": study, "study_kind": kind, "variant": variant, "seed": seed,
            "spec_hash": f"h-{variant}-{seed}", "dataset": "builtin", "dataset_hash": "data123",
            "fusion": "concat" if variant == "worse" else "dfblock", "backbone": "one_stage",
            "nop_trainable": 1000 + len(variant), "nop_paper": 5000, "protocol.attr_acc": "classifier-v1",
            "git_commit": "abc123", "device": "cpu", "overrides": "model.nf=4", "mlflow.parentRunId": parent,
            "trial": seed - 100, "data_version": 7, "runtime_threads": 3, "text_encoder_sha256": "f" * 64}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """One MLflow database for the module (creating one costs seconds): a 'synth' cumulative study with known
    values, and a 'factorial' study over the study file's 16 cells where only the regulariser matters."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("synth", artifact_location=(tmp / "art").as_uri())
    parent = client.create_run(exp, tags={"role": "invocation", "study": "synth", "cells": "worse,same,full",
                                          "command": "dfgan ablate --study synth", "hw.cpu": "test-cpu",
                                          "hw.torch_threads": "16"}).info.run_id
    # an older run of (full, 100) with another value: the latest finished one must win
    _log(client, exp, _cell_tags("synth", "cumulative", "full", 100, parent), {"attr_acc": {3: 0.1}},
         {"data.imsize": 32, "model.nf": 4})
    for variant, finals in FINAL.items():
        for seed, final in zip(SEEDS, finals, strict=True):
            hist = {1: final / 3, 2: final / 2, 3: final}
            memo = 0.6 if variant == "worse" else 0.01  # 'worse' copies its training images
            extra = {"attr_acc.noise_sd": {3: NOISE_SD[seed]}, "memorisation_attr": {3: memo},
                     "memorisation_attr.share": {3: 0.8 + 0.2 * memo}, "memorisation_attr.expected": {3: 0.8},
                     "memorisation_attr.threshold": {3: 0.1}, "memorisation_attr.flagged": {3: float(memo > 0.1)}}
            _log(client, exp, _cell_tags("synth", "cumulative", variant, seed, parent),
                 {"attr_acc": hist, "loss_g": {3: 1.0}, **extra},
                 {"data.imsize": 32, "model.nf": 4, "train.seed": seed,
                  "model.fusion.name": "concat" if variant == "worse" else "dfblock"})
    _log(client, exp, {**_cell_tags("synth", "cumulative", "worse", 103, parent), "error": "boom"},
         {"loss_g": {1: 1.0}}, {}, status="FAILED")
    client.set_terminated(parent, "FINISHED")

    from dfgan.studies.definition import load_study_definition
    from dfgan.studies.runner import plan_study

    fexp = client.create_experiment("factorial", artifact_location=(tmp / "art").as_uri())
    rng = np.random.default_rng(1)
    for e in plan_study(load_study_definition("factorial"), seeds=1, overrides=["model.nf=4"]).entries:
        y = 0.6 + (0.1 if dict(e.cell.factors)["regulariser"] == "ma_gp" else -0.1) + rng.normal(0, 0.01)
        tags = {**_cell_tags("factorial", "factorial", e.cell.label, e.seed, ""),
                **{f"factor.{a}": lv for a, lv in e.cell.factors}}
        tags.pop("mlflow.parentRunId")
        _log(client, fexp, tags, {"attr_acc": {2: y}}, {"data.imsize": 32, "model.nf": 4})
    return {"uri": uri, "tmp": tmp}


def test_factorial_effects_recover_known_effects():
    """Effects are estimated within noise, and the 95% intervals cover the true effects ~95% of the time."""
    axes = {"backbone": ["one_stage", "stacked"], "head": ["one_way", "two_way"],
            "regulariser": ["ma_gp", "none"], "fusion": ["dfblock", "cross_attention"]}
    truth = {"backbone": 0.2, "head": 0.1, "regulariser": -0.06, "fusion": 0.0, "backbone x head": 0.04}
    truth.update({f"{a} x {b}": 0.0 for a, b in itertools.combinations(axes, 2) if f"{a} x {b}" not in truth})
    cells = list(itertools.product(*axes.values()))

    def simulate(rng):
        rows = []
        for levels in cells:
            x = {a: 1.0 if lv == axes[a][0] else -1.0 for a, lv in zip(axes, levels, strict=True)}
            mean = 0.5 + sum(truth[a] / 2 * x[a] for a in axes)
            mean += truth["backbone x head"] / 2 * x["backbone"] * x["head"]
            for seed in (0, 1):
                rows.append({**{f"tags.factor.{a}": lv for a, lv in zip(axes, levels, strict=True)},
                             "metrics.m": mean + rng.normal(0, 0.005), "seed": seed})
        return factorial_effects(pd.DataFrame(rows), "metrics.m", axes)

    eff = simulate(np.random.default_rng(0))
    t = eff.table.set_index("term")
    assert eff.n == 32 and eff.df_resid == 32 - 11 and sorted(t.index) == sorted(truth)
    assert eff.df_error == 16 and eff.replicated_cells == 16  # pure error: 16 cells x (2 seeds - 1)
    for term, value in truth.items():
        assert t.loc[term, "effect"] == pytest.approx(value, abs=0.01)
    rng = np.random.default_rng(1)
    covered = [t.loc[term, "lo"] <= v <= t.loc[term, "hi"]
               for t in (simulate(rng).table.set_index("term") for _ in range(100)) for term, v in truth.items()]
    assert 0.92 <= np.mean(covered) <= 0.98


def test_metric_choice():
    assert quality_columns(["loss_g", "fid30k_test_clean", "attr_acc", "attr_acc/colour"]) == \
        ["attr_acc", "fid30k_test_clean"]
    assert choose_metric(["loss_g", "fd_attr"], "attr_acc")[0] == "fd_attr"
    name, why = choose_metric(["loss_g", "loss_d"])
    assert name == "loss_g" and "NOT measure" in why
    assert latex_escape("no_magp ± 0.1 Δ") == r"no\_magp $\pm$ 0.1 $\Delta$"


def test_report_tables_figures_provenance(synthetic):
    bench = synthetic["tmp"] / "benchmarks.json"
    rec = {"kind": "sampling", "variant": "full", "backbone": "one_stage", "imsize": 32, "nf": 4, "device": "cpu",
           "dtype": "float32", "batch": 8}  # as benchmarks/test_sampling.py writes them
    bench.write_text(json.dumps({"benchmarks": [
        {"name": "test_sampling[dfblock-fp32]", "extra_info": {**rec, "fusion": "dfblock", "images_per_s": 123.4}},
        {"name": "test_sampling[dfblock-fast]", "extra_info": {**rec, "fusion": "dfblock", "images_per_s": 300.0,
                                                               "dtype": "bfloat16"}},
        {"name": "test_sampling[concat-fp32]", "extra_info": {**rec, "fusion": "concat", "images_per_s": 50.0}},
        {"name": "test_sampling[concat-256]", "extra_info": {**rec, "fusion": "concat", "images_per_s": 9.0,
                                                             "imsize": 256}}]}))
    rep = build_report("synth", tracking_uri=synthetic["uri"], out_dir=synthetic["tmp"] / "reports",
                       benchmarks=str(bench), n_boot=2000)
    assert rep.metric == "attr_acc"
    t1 = rep.tables["table1_variants"].frame.set_index("variant")
    assert list(t1.index) == ["worse", "same", "full"]  # the study's row order
    full = np.array(FINAL["full"])
    assert t1.loc["full", "attr_acc ↑"] == f"{full.mean():.4g} ± {full.std(ddof=1):.2g}"  # the old 0.1 run is out
    assert t1.loc["full", "sampling img/s"].startswith("123.4 (cpu, float32")  # same generator, size, dtype
    assert t1.loc["worse", "sampling img/s"].startswith("50 (")  # its own generator (concat), not full's
    assert t1.loc["same", "sampling img/s"].startswith("123.4")
    assert "DF-GAN (paper): CUB FID 14.81" in t1.loc["full", "published (other data/protocol)"]
    assert t1.loc["worse", "NoP (G+D+heads)"] == "1,005"
    assert t1.loc["full", "attr_acc eval SD"] == "0.006"  # the evaluation's SD beside the seed SD
    assert "memorisation_attr ↓" not in t1.columns  # a check, not a quality column
    memo = rep.tables["memorisation_memorisation_attr"].frame.set_index("variant")
    assert memo.loc["worse", "runs flagged"] == "3 of 3" and memo.loc["worse", "reading"].startswith("FLAGGED")
    assert memo.loc["full", "reading"] == "no sign of memorisation"
    assert memo.loc["worse", "nearest real image is a training one"] == "0.92 (expected 0.8)"
    assert any("flagged worse" in n for n in rep.notes)

    t2 = rep.tables["table2_components"].frame.set_index("variant")
    col = "Δ attr_acc vs full [95% CI]"
    d = np.array(FINAL["worse"]) - full  # paired over the 3 seeds; the t interval by hand
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert t2.loc["worse", col] == f"{d.mean():+.3g} [{d.mean() - half:+.3g}, {d.mean() + half:+.3g}]"
    # 3 seeds: the sign-flip p cannot go below 0.25, so no mark however far the interval is from 0
    assert t2.loc["worse", "attr_acc vs full: n, MDE, p"].endswith("n too small for the test (t interval excludes 0)")
    assert not t2.loc["same", col].endswith("*")
    assert t2.loc["full", col] == "(reference)"
    # each step: the row against the previous one (the component just added)
    step = np.array(FINAL["same"]) - np.array(FINAL["worse"])
    half = stats.t.ppf(0.975, 2) * step.std(ddof=1) / np.sqrt(3)
    assert t2.loc["worse", "Δ attr_acc vs previous row [95% CI]"] == "(first row)"
    assert t2.loc["same", "Δ attr_acc vs previous row [95% CI]"] == \
        f"{step.mean():+.3g} [{step.mean() - half:+.3g}, {step.mean() + half:+.3g}]"
    assert t2.loc["same", "attr_acc vs previous: n, MDE, p"].startswith("n 3, paired t, MDE ")
    assert t2.loc["full", "attr_acc vs previous: n, MDE, p"] == t2.loc["same", "attr_acc vs full: n, MDE, p"]

    tex = (rep.folder / "table2_components.tex").read_text()
    assert all(s in tex for s in (r"\toprule", r"\midrule", r"\bottomrule", r"$\Delta$", r"$\pm$"))
    md = (rep.folder / "table2_components.md").read_text()
    assert md.count("\n| ") == 4 and "paired over common seeds" in md
    for fig in ("curves_attr_acc.png", "final_attr_acc.png", "quality_nop_speed.png"):
        assert (rep.folder / "figures" / fig).stat().st_size > 10_000
    readme = (rep.folder / "README.md").read_text()
    for s in ("data123", "h-worse-101", "classifier-v1", "test-cpu", "abc123", "dfgan ablate --study synth",
              "built-in data version 7", "torch threads (per run): 3", "`ffffffffffffffff`"):
        assert s in readme
    assert "torch_threads" not in readme  # the invoking process's thread count is not the runs'
    spec = readme[readme.index("Resolved spec"):]
    assert "```yaml\ndata:\n  imsize: 32\nmodel:\n  nf: 4\n```" in spec  # common to every cell
    assert "- worse: `model.fusion.name=concat`" in spec and "train.seed" not in spec
    assert any("replaced by the latest" in n for n in rep.notes) and any("1 failed" in n for n in rep.notes)
    assert len(pd.read_csv(rep.folder / "runs.csv")) == 9


def test_the_same_runs_give_the_same_report_files(synthetic):
    """A committed report diffs cleanly: exporting the same runs twice writes the same bytes (columns, protocol
    and hardware lines in a fixed order, the figures' jitter fixed), except the generation time."""
    import re

    folders = []
    for i in range(2):
        np.random.seed(i)  # two processes: numpy's global generator in another state each time
        folders.append(build_report("synth", tracking_uri=synthetic["uri"], out_dir=synthetic["tmp"] / f"again{i}",
                                    n_boot=200).folder)
    names = sorted(p.relative_to(folders[0]) for p in folders[0].rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(folders[1]) for p in folders[1].rglob("*") if p.is_file())
    assert any(str(n).endswith(".png") for n in names) and Path("runs.csv") in names
    stamp = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[^ `\"]*")
    differ = [n for n in names if stamp.sub(b"T", (folders[0] / n).read_bytes()) !=
              stamp.sub(b"T", (folders[1] / n).read_bytes())]
    assert not differ, differ


def test_report_without_benchmarks_or_quality_metric(synthetic, monkeypatch):
    monkeypatch.chdir(synthetic["tmp"])  # no reports/benchmarks.json here
    rep = build_report("synth", tracking_uri=synthetic["uri"], out_dir="out", metric="loss_g", n_boot=200)
    assert "sampling img/s" not in rep.tables["table1_variants"].frame
    assert any("omitted, no benchmark record" in n for n in rep.tables["table1_variants"].notes)
    with pytest.raises(NoRunsError, match="no MLflow experiment 'nope'.*synth"):
        build_report("nope", tracking_uri=synthetic["uri"], out_dir="out")


def test_factorial_report(synthetic):
    """A factorial study (the study file's axes, one seed) read from MLflow: the effects table and its figure."""
    rep = build_report("factorial", tracking_uri=synthetic["uri"], out_dir=synthetic["tmp"] / "reports", n_boot=200)
    eff = rep.tables["factorial_effects"].frame.set_index("term")
    assert float(eff.loc["regulariser", "effect on attr_acc"]) == pytest.approx(0.2, abs=0.03)
    # one seed per cell: no replication, so no intervals, p-values or marks, and the table says why
    assert eff.loc["regulariser", "95% CI"] == "no replication: none" and set(eff[""]) == {""}
    assert any("no seed replication" in n for n in rep.tables["factorial_effects"].notes)
    assert len(rep.tables["table1_variants"].frame) == 16
    assert (rep.folder / "figures" / "factorial_effects.png").is_file()


def test_dfgan_report_of_a_tiny_study_shows_steps_eval_sd_memorisation_and_provenance(tmp_path, monkeypatch):
    """`dfgan ablate` + `dfgan report` on a real tiny cumulative study (2 rows x 2 seeds): the per-step rows
    (each row against the previous one), the evaluation SD of the noise draws beside the seed SD, the
    memorisation check, and the provenance block with the built-in data version, the code commit, the runs'
    threads, the text encoders' weights hash and the resolved spec."""
    from dfgan.cli import main
    from dfgan.data.builtin import GENERATOR_VERSION
    from dfgan.fingerprint import CODE

    monkeypatch.setenv("DFGAN_CACHE", str(tmp_path / "cache"))
    tiny = ["model.nf=4", "data.imsize=32", "train.steps=2", "model.text_encoder.pretrain_steps=2",
            "model.text_encoder.pretrain_batch_size=8", "data.n_train=48", "data.n_test=16", "data.n_val=8",
            "train.batch_size=8", "train.threads=1", "eval.n_images=16", f"train.out_dir={tmp_path / 'runs'}"]
    study = tmp_path / "steps.yaml"
    study.write_text(yaml.safe_dump({"name": "steps", "kind": "cumulative", "variants": ["no_magp", "full"],
                                     "seeds": 2, "overrides": tiny}))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["ablate", "--study", "steps", "--definition", str(study), "--tracking-uri", uri,
                 "--storage", f"sqlite:///{tmp_path / 'optuna.db'}", "--no-progress"]) == 0
    assert main(["report", "--study", "steps", "--tracking-uri", uri, "--out", str(tmp_path / "reports")]) == 0
    folder = tmp_path / "reports" / "steps"
    readme = (folder / "README.md").read_text()
    # per-step rows: full against the row before it (no_magp), with its interval
    t2 = (folder / "table2_components.md").read_text()
    assert "Δ attr_acc vs previous row [95% CI]" in t2 and "(first row)" in t2
    assert re.search(r"\| full \|[^\n]*\| [+-][\d.e-]+ \[[+-][\d.e-]+, [+-][\d.e-]+\]", t2)
    # the evaluation SD (2 noise draws of every final evaluation) beside the seed SD
    t1 = (folder / "table1_variants.md").read_text()
    assert "attr_acc eval SD" in t1 and "SD between the noise draws" in t1
    runs = pd.read_csv(folder / "runs.csv")
    assert runs["metrics.attr_acc.noise_sd"].notna().all() and (runs["metrics.attr_acc.noise_sd"] >= 0).all()
    # the memorisation check, in its own table
    assert "Memorisation check (memorisation_attr)" in readme and runs["metrics.memorisation_attr"].notna().all()
    # provenance
    prov = readme[readme.index("## Provenance"):]
    assert f"built-in data version {GENERATOR_VERSION}" in prov and CODE.label in prov
    assert "torch threads (per run): 1" in prov and "text encoder weights" in prov
    assert "Resolved spec" in prov and "noise_draws: 2" in prov and "- full: `model.regulariser.name=ma_gp`" in prov
