"""Cell pools: studies that share cells train a common cell once (one run folder, one MLflow run) and each report
reads it; a cell another study of the pool is training is left to it. Tiny real training (3 cells in all)."""

from __future__ import annotations

import mlflow
import optuna
import pytest

from dfgan.cli import main
from dfgan.reports.build import build_report
from dfgan.reports.collect import collect
from dfgan.run_identity import run_hash
from dfgan.studies.definition import StudyDefinition, load_study_definition, pool_members
from dfgan.studies.ledger import worker_identity
from dfgan.studies.pool import POOL_ATTR, find_in_pool
from dfgan.studies.runner import load_or_create_study, plan_study, run_study, study_status
from dfgan.studies.storage import open_storage
from dfgan.train import loop
from tests.test_studies import TINY


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("DFGAN_CACHE", str(tmp_path / "cache"))
    return {"out": tmp_path / "runs", "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
            "overrides": [*TINY, f"train.out_dir={tmp_path / 'runs'}"]}


def _study(name: str, variants: list[str], pool: str | None = "p", kind: str = "grid") -> StudyDefinition:
    return StudyDefinition(name=name, kind=kind, variants=variants, seeds=1, cell_pool=pool, reference="full")


def test_paper_studies_share_their_common_cells():
    """The study files: cumulative and questions have the claims study's cells where the specs agree."""
    plans = {n: plan_study(load_study_definition(n), overrides=["model.nf=4"])
             for n in ("claims", "cumulative", "questions", "budget")}
    assert {p.definition.cell_pool for p in plans.values()} == {"paper_claims"}
    claims = {e.hash: e for e in plans["claims"].entries}
    assert len(plans["claims"].seeds) >= 5
    shared = {n: [e for e in plans[n].entries if e.hash in claims] for n in ("cumulative", "questions", "budget")}
    assert sorted((e.cell.label, e.seed) for e in shared["questions"]) == [("full", s) for s in (100, 101, 102)]
    # cumulative: full, and baseline_onestage_magp_oneway, which is the claims study's cross_attention cell
    assert {(e.cell.label, claims[e.hash].cell.label) for e in shared["cumulative"]} == \
        {("full", "full"), ("baseline_onestage_magp_oneway", "cross_attention")}
    assert shared["budget"] == [] and plans["budget"].entries[0].spec.eval.interval * 4 == \
        plans["budget"].entries[0].spec.train.steps
    first = plans["claims"].entries[0].spec
    assert first.eval.interval * 4 == first.train.steps  # evaluations at 1/4, 1/2, 3/4 and the end
    # the measurement issue's metrics in every study: attributes and memorisation each time, Inception at the end
    for p in plans.values():
        assert {tuple(e.spec.end_metrics()) for e in p.entries} == {
            ("attr_acc", "fd_attr", "memorisation_attr", "fid1k_test_clean", "kid1k_test_clean")}
        assert {tuple(e.spec.eval.metrics) for e in p.entries} == {("attr_acc", "fd_attr", "memorisation_attr")}
    assert all(e.spec.train.out_dir.endswith("studies/paper_claims") for p in plans.values() for e in p.entries)


def test_pool_reuses_a_finished_cell_of_another_study(env, monkeypatch):
    trained: list[tuple[str, str]] = []
    real_train = loop.train

    def counting_train(spec, **kw):
        trained.append((spec.name, run_hash(spec)))
        return real_train(spec, **kw)

    monkeypatch.setattr(loop, "train", counting_train)
    kw = dict(storage_url=env["storage"], tracking_uri=env["uri"], echo=lambda s: None)
    plan_a = plan_study(_study("A", ["full", "no_magp"]), overrides=env["overrides"])
    plan_b = plan_study(_study("B", ["no_magp", "two_way", "full"], kind="cumulative"), overrides=env["overrides"])
    plan_c = plan_study(_study("C", ["full"]), overrides=env["overrides"])
    plan_x = plan_study(_study("X", ["full"], pool=None), overrides=env["overrides"])
    full = plan_a.entry("full", 100).hash
    assert plan_b.entry("full", 100).hash == full == plan_x.entry("full", 100).hash
    assert plan_a.entry("full", 100).spec.train.out_dir == str(env["out"] / "studies" / "p")

    out_a = run_study(plan_a, **kw)
    assert len(out_a.trained) == 2 and out_a.reused == []
    status = {r["cell"]: r["status"] for r in study_status(plan_b, env["storage"])}
    assert status["full"].startswith("done in study 'A'") and status["two_way"] == "pending"

    trained.clear()
    out_b = run_study(plan_b, **kw)
    assert [name for name, _ in trained] == ["two_way"]  # only the cell A does not have
    assert sorted(out_b.reused) == ["full seed=100", "no_magp seed=100"] and out_b.remaining == []
    study_b = optuna.load_study(study_name="B", storage=open_storage(env["storage"]))
    reused = [t for t in study_b.trials if t.user_attrs.get("outcome") == "reused"]
    assert {t.user_attrs["reused_from_study"] for t in reused} == {"A"}
    a_value = {t.user_attrs["spec_hash"]: t.value for t in
               optuna.load_study(study_name="A", storage=open_storage(env["storage"])).trials}
    assert all(t.value == a_value[t.user_attrs["spec_hash"]] for t in reused)

    # one run folder and one MLflow run per spec hash
    folders = sorted(p.name for p in (env["out"] / "studies" / "p").iterdir() if p.is_dir())
    assert folders == sorted(f"{e.cell.label}-{e.hash}" for e in [*plan_a.entries, plan_b.entry("two_way", 100)])
    mlflow.set_tracking_uri(env["uri"])
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.role = 'cell'")
    hashes = {*(e.hash for e in plan_a.entries), plan_b.entry("two_way", 100).hash}
    assert sorted(runs["tags.spec_hash"]) == sorted(hashes)
    assert runs.loc[runs["tags.spec_hash"] == full, "tags.shared_with.B"].notna().all()

    # B's report reads A's runs as its own rows (labels, kind and overrides of B), in B's order
    data = collect("B", env["uri"])
    assert sorted(data.variants) == ["full", "no_magp", "two_way"]
    assert data.cells.loc[data.cells["variant"] == "full", "run_id"].iloc[0] == \
        runs.loc[runs["tags.spec_hash"] == full, "run_id"].iloc[0]
    assert any("reused here" in n and "A" in n for n in data.notes)
    rep = build_report("B", tracking_uri=env["uri"], out_dir=env["out"] / "reports", n_boot=100)
    assert list(rep.tables["table1_variants"].frame["variant"]) == ["no_magp", "two_way", "full"]
    assert "table2_components" in rep.tables  # B's own kind, though two of its runs were A's

    # a study made only of reused cells has no MLflow experiment of its own, and still reads back
    trained.clear()
    out_c = run_study(plan_c, **kw)
    assert trained == [] and out_c.reused == ["full seed=100"]
    assert list(collect("C", env["uri"]).variants) == ["full"]
    # outside the pool nothing is shared: the same spec trains again (in the study's own folder)
    out_x = run_study(plan_x, **kw)
    assert out_x.trained == ["full seed=100"] and trained == [("full", full)]


def test_pool_yields_to_a_live_claimant_of_another_study(env):
    """A cell another study's live worker trains (or claimed first) is not trained again; a later claim is."""
    storage = open_storage(env["storage"])
    other = load_or_create_study("A", storage, kind="grid", sampler=optuna.samplers.RandomSampler(),
                                 direction="maximize")
    other.set_user_attr(POOL_ATTR, "p")
    mine = load_or_create_study("B", storage, kind="grid", sampler=optuna.samplers.RandomSampler(),
                                direction="maximize")
    early = mine.ask()  # B's claim, made before A's
    t = other.ask()
    for k, v in {"spec_hash": "h1", "outcome": "claiming", "worker": worker_identity()}.items():
        t.set_user_attr(k, v)
    me = storage.get_trial(early._trial_id)
    assert find_in_pool(storage, "p", "B", "h1", me) is None  # A claimed later: B goes first
    t.set_user_attr("outcome", "running")  # A has committed: B yields
    match = find_in_pool(storage, "p", "B", "h1", me)
    assert match.status == "running" and match.study == "A"
    assert find_in_pool(storage, "q", "B", "h1", me) is None  # another pool: not seen
    t.set_user_attr("outcome", "trained")
    other.tell(t, 0.5)
    match = find_in_pool(storage, "p", "B", "h1", me)
    assert match.status == "done" and match.trial.value == 0.5


def test_one_study_one_commit_over_its_pool(tmp_path, capsys):
    """``dfgan commits --expect``: every cell run of the study's pool (the paper studies share `paper_claims`) must
    have run the expected commit; a cell of another commit, or of the same one with local changes, fails it."""
    assert pool_members("claims")[0] == "claims"
    assert set(pool_members("claims")) == {"claims", "cumulative", "questions", "budget"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)

    def cell(study: str, commit: str) -> None:
        exp = client.get_experiment_by_name(study)
        exp_id = exp.experiment_id if exp else client.create_experiment(study)
        client.set_terminated(client.create_run(exp_id, tags={"role": "cell", "git_commit": commit}).info.run_id)

    a, b = "a" * 40, "b" * 40
    cli = ["commits", "--study", "claims", "--tracking-uri", uri]
    assert main(cli + ["--expect", a[:7]]) == 0 and "no cell runs of claims" in capsys.readouterr().out
    cell("claims", a)
    cell("claims", a)
    assert main(cli + ["--expect", a[:7]]) == 0
    assert f"{a}: 2 FINISHED" in capsys.readouterr().out
    cell("questions", b)  # a study sharing claims' cells, on other code
    assert main(cli + ["--expect", a[:7]]) == 2
    out = capsys.readouterr().out
    assert f"ran {b}, not {a[:7]}" in out and f"--commit {b[:12]}" in out
    assert main(["commits", "--study", "factorial", "--tracking-uri", uri, "--expect", a]) == 0  # not in the pool
    cell("claims", a + "-dirty")
    assert main(["commits", "--study", "claims", "--tracking-uri", uri]) == 0  # no --expect: a listing only
    assert main(cli + ["--expect", b]) == 2 and f"ran {a}, {a}-dirty, not {b}" in capsys.readouterr().out


def test_one_study_one_precision_over_its_pool(tmp_path, capsys, monkeypatch):
    """``dfgan commits --expect`` also stops a machine that would train the next cells in another precision than
    most finished cells of the pool (train.precision=auto resolves per machine: bf16 where it is native), unless
    --allow-precision-mix; runs without the tag are not counted."""
    from dfgan import runtime

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.tracking.MlflowClient(uri)
    exp_id = client.create_experiment("claims")
    a = "a" * 40

    def cell(precision: str | None) -> None:
        tags = {"role": "cell", "git_commit": a, **({"speed_precision": precision} if precision else {})}
        client.set_terminated(client.create_run(exp_id, tags=tags).info.run_id)

    cli = ["commits", "--study", "claims", "--tracking-uri", uri, "--expect", a]
    monkeypatch.setattr(runtime, "bf16_is_fast", lambda device="cpu": False)  # this machine: fp32
    cell(None)
    assert main(cli) == 0 and "finished cells: none" in capsys.readouterr().out
    cell("bf16"), cell("bf16"), cell("fp32")
    assert main(cli) == 2
    out = capsys.readouterr().out
    assert "this machine trains in fp32 (train.precision=auto); finished cells: 2 bf16, 1 fp32" in out
    assert "2 of the pool's finished cells trained in bf16" in out and "--allow-precision-mix" in out
    assert main(cli + ["--allow-precision-mix"]) == 0
    assert main(cli[:-2]) == 0  # no --expect: a listing only, no precision check
    monkeypatch.setattr(runtime, "bf16_is_fast", lambda device="cpu": True)  # a machine with native bf16
    assert main(cli) == 0 and "this machine trains in bf16" in capsys.readouterr().out
