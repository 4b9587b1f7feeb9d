"""Studies: definitions, storage URLs, a tiny two-variant two-seed study that is interrupted, fails a cell and
resumes, the single-variant command, and the hyperparameter search with pruning and export."""

from __future__ import annotations

import math
import re
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from dfgan.experiment import resolve_spec
from dfgan.run_identity import run_hash
from dfgan.spec import SpecError
from dfgan.studies.definition import adhoc_definition, load_study_definition, parse_seeds, resolve_seeds
from dfgan.studies.grid_sampler import grid_sampler_class
from dfgan.studies.runner import plan_study, run_study, study_status
from dfgan.studies.search import parse_params, run_search
from dfgan.studies.storage import describe_storage, open_storage
from dfgan.train import loop

TINY = ["model.nf=4", "data.imsize=32", "train.steps=2", "model.text_encoder.pretrain_steps=2",
        "data.n_train=64", "data.n_test=16", "data.n_val=16", "train.batch_size=8", "train.threads=1",
        "eval.n_images=32"]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DFGAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {"out": tmp_path / "runs", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
            "overrides": [*TINY, f"train.out_dir={tmp_path / 'runs'}"]}


# ---- definitions and plans (no training) -------------------------------------------------------------------------
def test_study_files_define_the_paper_tables():
    comp = load_study_definition("cumulative")
    labels = [c.label for c in comp.cells()]
    assert comp.kind == "cumulative" and labels[0] == "baseline" and labels[-1] == "full" and len(labels) == 5
    # each row adds exactly one component to the previous one (the paper's cumulative order)
    specs = [resolve_spec(v, overrides=["model.nf=4"]) for v in labels]
    for prev, cur in zip(specs, specs[1:], strict=False):
        a, b = prev.model.model_dump(), cur.model.model_dump()
        assert sum(a[k] != b[k] for k in a) == 1, (prev.name, cur.name)

    fac = load_study_definition("factorial")
    plan = plan_study(fac, seeds=1, overrides=["model.nf=4"])
    assert len(plan.entries) == 16 and len({e.hash for e in plan.entries}) == 16
    first = plan.entries[0]
    assert first.cell.label == "one_stage-one_way-ma_gp-dfblock"
    full = plan_study(adhoc_definition("x", ["full"], 1), overrides=["model.nf=4"]).entries[0]
    assert first.spec.model == full.spec.model  # DF-GAN = the first level of every axis
    by_label = {e.cell.label: e.spec for e in plan.entries}
    s = by_label["stacked-two_way-none-cross_attention"]
    assert (s.model.backbone, s.model.head, s.model.regulariser.name, s.model.fusion.name) == \
        ("stacked", "two_way", "none", "cross_attention")
    assert dict(plan.entries[5].cell.factors).keys() == {"backbone", "head", "regulariser", "fusion"}


def test_plan_seeds_overrides_and_errors(tmp_path):
    d = adhoc_definition("t", ["full", "no_magp"], 2)
    p1 = plan_study(d, overrides=["model.nf=4", f"train.out_dir={tmp_path}"])
    assert p1.seeds == [100, 101]  # from the spec's own seed (DF-GAN: 100)
    assert {e.spec.train.seed for e in p1.entries} == {100, 101}
    assert all(e.spec.tracking.experiment == "t" for e in p1.entries)
    assert all(Path(e.spec.train.out_dir) == tmp_path / "studies" / "t" for e in p1.entries)
    p2 = plan_study(d, overrides=["model.nf=8", f"train.out_dir={tmp_path}"])
    assert p1.grid != p2.grid and not ({e.hash for e in p1.entries} & {e.hash for e in p2.entries})
    assert plan_study(d, overrides=["model.nf=4", f"train.out_dir={tmp_path}"]).grid == p1.grid
    assert resolve_seeds([7, 3], 100) == [7, 3] and parse_seeds("3") == 3 and parse_seeds("1,5") == [1, 5]
    with pytest.raises(SpecError, match="no_such_variant.*full"):
        plan_study(adhoc_definition("t", ["no_such_variant"], 1))
    with pytest.raises(SpecError, match="seeds"):
        parse_seeds("three")
    with pytest.raises(SpecError, match="(?s)variant 'full'.*model.nf"):
        plan_study(d, overrides=["model.nf=0"])
    with pytest.raises(SpecError, match="(?s)cell 'cross_attention'.*requires word"):
        plan_study(adhoc_definition("t", ["full", "cross_attention"], 1),
                   overrides=["model.text_encoder.name=sentence_transformer"])


def test_storage_urls(tmp_path):
    journal = open_storage(f"journal://{tmp_path}/j/study.log")
    assert isinstance(journal, optuna.storages.JournalStorage)
    optuna.create_study(study_name="s", storage=journal)
    assert (tmp_path / "j" / "study.log").is_file()
    assert isinstance(open_storage(f"sqlite:///{tmp_path}/a/b.db"), optuna.storages.RDBStorage)
    with pytest.raises(ValueError, match="SQLAlchemy URL"):
        open_storage(str(tmp_path / "x.db"))
    assert "secret" not in describe_storage("postgresql://me:secret@db.example/optuna")


def test_parse_search_params():
    ps = parse_params("train.lr_g=loguniform(1e-5,1e-3),model.regulariser.k=uniform(0.5,4),model.nf=choice(16,32)")
    assert [(p.key, p.kind, p.args) for p in ps] == [
        ("train.lr_g", "loguniform", (1e-5, 1e-3)), ("model.regulariser.k", "uniform", (0.5, 4)),
        ("model.nf", "choice", (16, 32))]
    for bad, msg in [("train.lr_g=normal(0,1)", "unknown distribution"), ("train.lr_g=uniform(2,1)", "below"),
                     ("train.lr_g=loguniform(0,1)", "low > 0"), ("lr", "cannot read")]:
        with pytest.raises(SpecError, match=msg):
            parse_params(bad)


# ---- a tiny real study -----------------------------------------------------------------------------------------
def _cell_runs(uri: str, study: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[study], filter_string="tags.role = 'cell'")


def test_study_interrupted_failing_cell_resumes_and_retries(env, monkeypatch):
    """2 variants x 2 seeds. Invocation 1 stops after 2 cells; invocation 2 runs only the 2 missing ones, one of
    which fails inside training; invocation 3 retries only that one; invocation 4 has nothing to do."""
    plan = plan_study(adhoc_definition("tiny", ["full", "no_magp"], 2), overrides=env["overrides"])
    trained: list[str] = []
    real_train, real_reg = loop.train, loop.build_regulariser
    fail_once: dict[str, str] = {}

    def counting_train(spec, **kw):
        trained.append(run_hash(spec))
        return real_train(spec, **kw)

    def maybe_failing_regulariser(spec):  # runs after the MLflow run started: a failure inside training
        if fail_once.pop(run_hash(spec), None):
            raise RuntimeError(f"injected failure for {spec.name} seed {spec.train.seed}")
        return real_reg(spec)

    monkeypatch.setattr(loop, "train", counting_train)
    monkeypatch.setattr(loop, "build_regulariser", maybe_failing_regulariser)
    kw = dict(storage_url=env["storage"], tracking_uri=env["uri"], echo=lambda s: None)

    out1 = run_study(plan, max_cells=2, **kw)
    assert len(out1.trained) == 2 and len(out1.remaining) == 2 and len(set(trained)) == 2
    first = set(trained)
    missing = {e.hash for e in plan.entries} - first
    status = {r["spec_hash"]: r["status"] for r in study_status(plan, env["storage"])}
    assert {h for h, s in status.items() if s == "done"} == first

    trained.clear()
    victim = sorted(missing)[0]
    fail_once[victim] = "yes"
    out2 = run_study(plan, **kw)
    assert set(trained) == missing and len(trained) == 2  # only the missing cells ran
    assert len(out2.failed) == 1 and len(out2.trained) == 1
    study = optuna.load_study(study_name="tiny", storage=open_storage(env["storage"]))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["spec_hash"] == victim
    assert "injected failure" in failed[0].user_attrs["error"]
    runs = _cell_runs(env["uri"], "tiny")
    bad = runs[runs["status"] == "FAILED"]
    assert len(bad) == 1 and "injected failure" in bad["tags.error"].iloc[0]

    trained.clear()
    out3 = run_study(plan, **kw)
    assert trained == [victim] and len(out3.requeued) == 1 and out3.remaining == []

    trained.clear()
    out4 = run_study(plan, **kw)
    assert trained == [] and out4.trained == [] and out4.remaining == []

    # MLflow: every cell once, FINISHED, nested under an invocation run, with the study tags
    runs = _cell_runs(env["uri"], "tiny")
    fin = runs[runs["status"] == "FINISHED"]
    assert sorted(fin["tags.spec_hash"]) == sorted(e.hash for e in plan.entries)
    assert sorted(zip(fin["tags.variant"], fin["tags.seed"].astype(int), strict=True)) == \
        sorted((e.cell.label, e.seed) for e in plan.entries)
    assert set(fin["tags.study"]) == {"tiny"} and fin["tags.trial"].notna().all()
    parents = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.role = 'invocation'")
    assert len(parents) == 3  # invocations that trained something
    assert set(fin["tags.mlflow.parentRunId"]) <= set(parents["run_id"])
    assert (parents["status"] == "FINISHED").all()
    trial_states = [t.state for t in optuna.load_study(study_name="tiny", storage=open_storage(env["storage"])).trials]
    assert trial_states.count(TrialState.COMPLETE) == 4

    # the report of this study: one row per variant, values = the runs' own final attr_acc
    from dfgan.reports.build import build_report

    rep = build_report("tiny", tracking_uri=env["uri"], out_dir=env["out"] / "reports", n_boot=500)
    t1 = rep.tables["table1_variants"].frame
    assert list(t1["variant"]) == ["full", "no_magp"] and list(t1["seeds"]) == [2, 2]
    for v in ("full", "no_magp"):  # the base spec evaluates attr_acc at the end of every run
        mean = fin.loc[fin["tags.variant"] == v, "metrics.attr_acc"].mean()
        assert t1.loc[t1["variant"] == v, "attr_acc ↑"].iloc[0].startswith(f"{mean:.4g}")
    assert (rep.folder / "table2_differences.tex").read_text().count("no\\_magp") == 1
    assert all(p.is_file() and p.stat().st_size > 0 for p in rep.files)

    # a changed common override is a new grid in the same study and storage: its cells run (Optuna would
    # refuse a changed choice list under one parameter name), and the old grid's cells stay done
    plan2 = plan_study(adhoc_definition("tiny", ["full", "no_magp"], 2), overrides=[*env["overrides"], "train.steps=3"])
    assert plan2.grid != plan.grid
    trained.clear()
    out5 = run_study(plan2, max_cells=1, **kw)
    assert len(out5.trained) == 1 and trained == [h for h in trained if h in {e.hash for e in plan2.entries}]
    assert {r["status"] for r in study_status(plan, env["storage"])} == {"done"}


def test_single_variant_command(env, capsys):
    """`dfgan ablate --variant no_magp` (what `nox -s ablation -- --variant no_magp` runs): one cell, the
    spec's own seed, a FINISHED MLflow run; with stderr no terminal (a log file) the cell's training still
    shows plain status lines by default (issue 15: a log file showed nothing during training)."""
    from dfgan.cli import main

    rc = main(["ablate", "--variant", "no_magp", "--storage", env["storage"], "--tracking-uri", env["uri"],
               *env["overrides"]])
    assert rc == 0
    err = capsys.readouterr().err
    assert re.search(r"^train no_magp: \d+/\d+ steps", err, re.M), err[-2000:]
    runs = _cell_runs(env["uri"], "no_magp")
    assert len(runs) == 1 and runs["status"].iloc[0] == "FINISHED"
    assert runs["tags.seed"].iloc[0] == "100" and runs["params.model.regulariser.name"].iloc[0] == "none"


def test_search_reports_prunes_and_exports(env, monkeypatch, tmp_path):
    """TPE over lr_g; a stand-in for the periodic attr_acc (peaked at lr_g = 1e-4, so the test knows the
    values) reaches the trials through the training loop's on_eval hook, on the validation split; the median
    pruner stops the worse ones after its warm-up and never at the final evaluation; the best is retrained on
    fresh seeds and evaluated on test, and becomes a variant file."""
    from dfgan.studies.search import prune_warmup

    def score(spec):
        return -abs(math.log10(spec.train.lr_g) + 4.0)

    evaluated: list[tuple[str, int, int]] = []

    def fake_eval(spec, run_hash, gan, conditioner, dataset, device, tracker, step, run_dir, **_):
        evaluated.append((spec.eval.split, spec.train.seed, step))
        values = {"attr_acc" if spec.eval.split == "test" else "attr_acc_val": score(spec)}
        tracker.metrics(values, step)
        return [{"metric": k, "value": v} for k, v in values.items()]

    monkeypatch.setattr(loop, "evaluate_during_training", fake_eval)
    export = tmp_path / "tuned_best.yaml"
    over = [*env["overrides"], "train.steps=4", "eval.interval=1", "eval.metrics=[attr_acc]",
            "eval.prune_warmup_steps=2"]
    assert prune_warmup(resolve_spec("full", overrides=["train.steps=100"])) == 25  # default: a quarter
    out = run_search(study="tune", variant="full", params=parse_params("train.lr_g=loguniform(1e-6,1e-2)"),
                     n_trials=4, metric="attr_acc", direction="maximize", overrides=over,
                     storage_url=env["storage"], tracking_uri=env["uri"], export=export, sampler_seed=3,
                     retrain_seeds=2, echo=lambda s: None)
    study = optuna.load_study(study_name="tune", storage=open_storage(env["storage"]))
    trials = study.trials
    assert out.metric == "attr_acc_val" and out.complete + out.pruned == 4 and out.pruned >= 1
    trial_evals = [e for e in evaluated if e[1] == 100]
    assert {split for split, _, _ in trial_evals} == {"val"}  # selection never looked at test
    for t in trials:  # every trial got the periodic values through the hook, never the final one
        assert sorted(t.intermediate_values)[:1] == [1] and max(t.intermediate_values) < 4
        assert all(v == pytest.approx(-abs(math.log10(t.params["train.lr_g"]) + 4.0))
                   for v in t.intermediate_values.values())
        trained_to_the_end = ("val", 100, 4) in evaluated and t.state == TrialState.COMPLETE
        assert t.state == TrialState.COMPLETE or max(t.intermediate_values) >= 2, "pruned inside the warm-up"
        assert trained_to_the_end or t.state == TrialState.PRUNED
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in trials:
        if t.state == TrialState.PRUNED:  # pruned below the median of the earlier trials at that step
            step = max(t.intermediate_values)
            earlier = sorted(c.intermediate_values[step] for c in trials
                             if c.number < t.number and step in c.intermediate_values)
            assert t.intermediate_values[step] < earlier[len(earlier) // 2] + 1e-12 or len(earlier) < 2
    best = max(complete, key=lambda t: t.value)
    assert out.best_trial == best.number
    # the best trial retrained on fresh seeds (not the trials' 100), evaluated on test
    assert sorted(out.retrain.values) == [101, 102] and out.retrain.metric == "attr_acc"
    assert [e for e in evaluated if e[1] != 100] == [("test", 101, 4), ("test", 102, 4)]
    assert out.retrain.mean == pytest.approx(best.value) and out.retrain.lo == pytest.approx(best.value)
    exported = yaml.safe_load(export.read_text())
    assert exported["extends"] == "full" and "retrained on fresh seeds" in export.read_text()
    assert exported["train"]["lr_g"] == pytest.approx(best.params["train.lr_g"])
    assert resolve_spec(spec_file=export).train.lr_g == pytest.approx(best.params["train.lr_g"])
    runs = _cell_runs(env["uri"], "tune")
    pruned_runs = runs[runs.get("tags.pruned", "") == "true"]
    assert len(pruned_runs) == out.pruned and (pruned_runs["status"] == "KILLED").all()

    from dfgan.reports.build import build_report

    rep = build_report("tune", tracking_uri=env["uri"], out_dir=tmp_path / "reports")
    trials = rep.tables["search_trials"].frame
    assert rep.metric == "attr_acc_val" and len(trials) == out.complete  # every finished trial, no retrained run
    assert int(trials["trial"].iloc[0]) == best.number  # best first
    retrained = rep.tables["search_best_retrained"].frame
    assert list(retrained["seed"])[:2] == [101, 102] and "95% CI" in retrained.iloc[2, 1]


def test_dead_worker_trial_is_failed_and_retried(env):
    """A worker killed mid-cell leaves its trial RUNNING: the next invocation fails it (process gone) and
    trains the cell; a bad search setup fails before any trial."""
    import subprocess
    import sys

    from dfgan.studies.ledger import worker_identity
    from dfgan.studies.runner import load_or_create_study

    plan = plan_study(adhoc_definition("dead", ["no_magp"], 1), overrides=env["overrides"])
    e = plan.entries[0]
    study = load_or_create_study("dead", open_storage(env["storage"]), kind="grid",
                                 sampler=optuna.samplers.RandomSampler(), direction="maximize")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial = study.ask()
    for k, v in {"spec_hash": e.hash, "cell": e.cell.label, "seed": e.seed, "outcome": "running",
                 "worker": {**worker_identity(), "pid": int(gone.stdout)}}.items():
        trial.set_user_attr(k, v)
    assert study_status(plan, env["storage"])[0]["status"].startswith("stale")
    out = run_study(plan, storage_url=env["storage"], tracking_uri=env["uri"], echo=lambda s: None)
    assert out.requeued == [e.key] and out.trained == [e.key]
    states = {t.number: t for t in optuna.load_study(study_name="dead", storage=open_storage(env["storage"])).trials}
    assert states[trial.number].state == TrialState.FAIL and "stopped without finishing" in \
        states[trial.number].user_attrs["error"]

    with pytest.raises(SpecError, match="unknown metric 'nope'"):
        run_search(study="bad", variant="full", params=parse_params("train.lr_g=uniform(1e-4,2e-4)"), n_trials=1,
                   metric="attr_acc", overrides=[*env["overrides"], "eval.metrics=[nope]"],
                   storage_url=env["storage"], tracking_uri=env["uri"], echo=lambda s: None)
    assert "bad" not in [s.study_name for s in optuna.get_all_study_summaries(open_storage(env["storage"]))]


def test_dry_run_says_where_each_unfinished_cell_resumes(env, capsys):
    """`dfgan ablate --dry-run` lists an unfinished cell with the step its checkpoint resumes from and its
    earlier attempts, and ends with the counts per status; a done cell shows no old error."""
    import torch

    from dfgan import runs
    from dfgan.cli import main
    from dfgan.run_identity import run_folder
    from dfgan.studies.ledger import set_error
    from dfgan.studies.runner import load_or_create_study

    plan = plan_study(adhoc_definition("dry", ["full", "no_magp"], 1), overrides=env["overrides"])
    done, killed = plan.entries
    study = load_or_create_study("dry", open_storage(env["storage"]), kind="grid",
                                 sampler=optuna.samplers.RandomSampler(), direction="maximize")
    for e, state in ((done, TrialState.FAIL), (done, TrialState.COMPLETE), (killed, TrialState.FAIL)):
        trial = study.ask()
        trial.set_user_attr("spec_hash", e.hash)
        trial.set_user_attr("outcome", "trained" if state == TrialState.COMPLETE else "failed")
        if state == TrialState.FAIL:
            set_error(trial, f"worker stopped during {e.cell.label}")
        study.tell(trial, 0.5 if state == TrialState.COMPLETE else None, state=state)
    folder = run_folder(killed.spec)
    folder.mkdir(parents=True)
    torch.save({"format": runs.FORMAT, "step": 7, "models": {}}, folder / runs.CHECKPOINT)

    rows = {r["cell"]: r for r in study_status(plan, env["storage"])}
    assert rows["full"]["status"] == "done" and rows["full"]["attempts"] == 1 and rows["full"]["error"] is None
    assert rows["no_magp"]["status"] == "failed" and rows["no_magp"]["checkpoint_step"] == 7
    assert main(["ablate", "--study", "dry", "--variants", "full,no_magp", "--seeds", "1", "--storage",
                 env["storage"], "--dry-run", *env["overrides"]]) == 0
    out = capsys.readouterr().out
    assert re.search(r"full +seed=100 +\w+  done  \(1 earlier attempt\)$", out, re.M), out
    assert re.search(r"no_magp .* failed  \(checkpoint at step 7/2; 1 earlier attempt, the last: worker "
                     r"stopped during no_magp\)$", out, re.M), out
    assert out.rstrip().endswith("1 done, 1 failed") or out.rstrip().endswith("1 failed, 1 done"), out


def test_grid_cells_are_handed_out_seed_major():
    """Workers get every arm of one seed before the next seed (plan order, not Optuna's shuffle), so a study
    stopped part-way has whole seeds to pair; the grid is still handed out once each."""
    labels, seeds = ["full", "stacked", "no_magp"], [100, 101, 102]
    space = {"variant@g": labels, "seed@g": seeds}
    study = optuna.create_study(sampler=grid_sampler_class()(space, order=["seed@g", "variant@g"]))
    got = []
    for _ in range(len(labels) * len(seeds)):
        t = study.ask()
        got.append((t.suggest_categorical("seed@g", seeds), t.suggest_categorical("variant@g", labels)))
        study.tell(t, 0.0)
    assert got == [(s, v) for s in seeds for v in labels]


def test_requeued_cells_do_not_push_the_grid_order_on():
    """A cell re-queued by the runner (enqueue_trial: a trial number, no grid id) comes first and the fresh cells
    go on in plan order: Optuna's own rule (trial k gets grid id k) skipped one grid point per re-queue."""
    labels, seeds = ["full", "stacked"], [100, 101, 102]
    space = {"variant@g": labels, "seed@g": seeds}
    study = optuna.create_study(sampler=grid_sampler_class()(space, order=["seed@g", "variant@g"]))

    def take():
        t = study.ask()
        return t, (t.suggest_categorical("seed@g", seeds), t.suggest_categorical("variant@g", labels))

    t0, first = take()
    study.tell(t0, 0.0)
    t1, second = take()
    study.tell(t1, state=TrialState.FAIL)  # a worker died: the runner re-queues the cell
    study.enqueue_trial({"variant@g": "stacked", "seed@g": 100})
    got = [take() for _ in range(len(labels) * len(seeds) - 1)]
    for t, _ in got:
        study.tell(t, 0.0)
    assert [first, second, *(c for _, c in got)] == [
        (100, "full"), (100, "stacked"), (100, "stacked"), (101, "full"), (101, "stacked"), (102, "full"),
        (102, "stacked")]
