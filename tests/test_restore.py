"""Restoring a study from its committed export (``dfgan restore``): a tiny study is trained, reported, its stores
thrown away, and restored from ``cells.jsonl``: no cell is trained again, the histories and the report's numbers
come back; an export that does not match the study writes nothing; an older ``runs.csv`` restores final values."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from dfgan.cli import main
from dfgan.reports.build import build_report
from dfgan.spec import SpecError
from dfgan.studies.definition import adhoc_definition
from dfgan.studies.restore import CELLS_FILE, read_export, restore_study
from dfgan.studies.runner import plan_study, run_study, study_status
from tests.test_studies import TINY

EVAL = ["eval.metrics=[attr_acc]", "eval.interval=1", "train.steps=2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-variant, 2-seed study trained and reported once for the module."""
    tmp = tmp_path_factory.mktemp("restore")
    mp = pytest.MonkeyPatch()
    mp.setenv("DFGAN_CACHE", str(tmp / "cache"))
    overrides = [*TINY, *EVAL, f"train.out_dir={tmp / 'runs'}"]
    plan = plan_study(adhoc_definition("tiny", ["full", "no_magp"], 2), overrides=overrides)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    out = run_study(plan, storage_url=f"sqlite:///{tmp / 'optuna.db'}", tracking_uri=uri, echo=lambda s: None)
    assert len(out.trained) == 4
    rep = build_report("tiny", tracking_uri=uri, out_dir=str(tmp / "reports"), n_boot=200)
    yield {"tmp": tmp, "plan": plan, "overrides": overrides, "uri": uri, "rep": rep}
    mp.undo()


def _histories(uri: str, key: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    out = {}
    for r in client.search_runs([exp.experiment_id], "tags.role = 'cell'"):
        out[(r.data.tags["variant"], r.data.tags["seed"])] = sorted(
            (m.step, m.value) for m in client.get_metric_history(r.info.run_id, key))
    return out


def test_export_then_restore_gives_back_the_study(trained, tmp_path):
    cells = read_export(trained["rep"].folder / CELLS_FILE)
    assert sorted(c.key for c in cells) == sorted(e.key for e in trained["plan"].entries)
    assert all(len(c.history["attr_acc"]) == 2 for c in cells)  # evaluated at step 1 and at the end

    uri, storage = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'optuna.db'}"
    out = restore_study(trained["plan"], cells, source="cells.jsonl@abc", storage_url=storage, tracking_uri=uri)
    assert sorted(out.restored) == sorted(c.key for c in cells) and not out.history_lost and not out.queued
    assert {r["status"] for r in study_status(trained["plan"], storage)} == {"done"}
    again = run_study(trained["plan"], storage_url=storage, tracking_uri=uri, echo=lambda s: None)
    assert again.trained == [] and again.remaining == []  # nothing trained twice
    assert restore_study(trained["plan"], cells, source="x", storage_url=storage, tracking_uri=uri).restored == []

    assert _histories(uri, "attr_acc") == _histories(trained["uri"], "attr_acc")
    rep = build_report("tiny", tracking_uri=uri, out_dir=str(tmp_path / "reports"), n_boot=200)
    for key, table in trained["rep"].tables.items():
        if "speed" not in key:
            pd.testing.assert_frame_equal(rep.tables[key].frame, table.frame, check_dtype=False)
    runs = pd.read_csv(rep.folder / "runs.csv")
    assert set(runs["tags.restored_from"]) == {"cells.jsonl@abc"}
    assert set(runs["tags.restored_history"]) == {"periodic evaluations"}
    assert any(n.startswith("4 of the 4 cell runs were restored") and "final values only" not in n
               for n in rep.notes)
    parents = {MlflowClient(uri).get_run(p).data.tags.get("restored_from") for p in runs["tags.mlflow.parentRunId"]}
    assert parents == {"cells.jsonl@abc"}  # one invocation run of the restore nests the restored runs
    assert len(json.loads((rep.folder / "provenance.json").read_text())["commands"]) == 1


def test_a_mismatched_export_writes_nothing(trained, tmp_path):
    cells = read_export(trained["rep"].folder / CELLS_FILE)
    other = plan_study(adhoc_definition("tiny", ["full", "no_magp"], 2),
                       overrides=[*trained["overrides"], "train.lr_g=0.0002"])
    storage = tmp_path / "optuna.db"
    with pytest.raises(SpecError, match=r"full seed=100: exported spec hash .* the study's is"):
        restore_study(other, cells, source="x", storage_url=f"sqlite:///{storage}",
                      tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert not storage.exists() and not (tmp_path / "mlflow.db").exists()
    one_seed = plan_study(adhoc_definition("tiny", ["full", "no_magp"], 1), overrides=trained["overrides"])
    with pytest.raises(SpecError, match="seed=101: not a cell of study 'tiny'"):
        restore_study(one_seed, cells, source="x", storage_url=f"sqlite:///{storage}")


def test_runs_csv_restores_final_values_and_queues_the_rest_in_plan_order(trained, tmp_path, capsys, monkeypatch):
    """An older report's runs.csv, part-way through a study: the finished cells come back with their final
    values only (said so); the cells left are queued seed-major, which is the order a runner then takes."""
    csv = pd.read_csv(trained["rep"].folder / "runs.csv")
    part = tmp_path / "export"
    part.mkdir()
    csv[(csv["seed"] == 100) | (csv["variant"] == "no_magp")].to_csv(part / "runs.csv", index=False)
    monkeypatch.chdir(tmp_path)
    storage, uri = f"sqlite:///{tmp_path / 'optuna.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["restore", "--variants", "full,no_magp", "--seeds", "2", "--study", "tiny", "--from",
            str(part / "runs.csv"), "--storage", storage, "--tracking-uri", uri, *trained["overrides"]]
    assert main([*args, "--dry-run"]) == 0
    assert "would restore 3 cell(s)" in capsys.readouterr().out and not (tmp_path / "optuna.db").exists()
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "restored 3 cell(s)" in text and "(final values only: no periodic evaluations" in text
    assert "queued in plan order: 1 cell(s): full seed=101" in text
    hist = _histories(uri, "attr_acc")
    assert len(hist) == 3 and all(len(h) == 1 and h[0][0] == 2 for h in hist.values())  # at the last step
    study = optuna.load_study(study_name="tiny", storage=storage)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["spec_hash"] for t in waiting] == [trained["plan"].entry("full", 101).hash]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert {t.user_attrs["restored_from"] for t in done} == {str(part / "runs.csv")}
    rep = build_report("tiny", tracking_uri=uri, out_dir=str(tmp_path / "reports"), n_boot=200)
    assert any(n.startswith("3 of the 3 cell runs were restored from a committed export") and
               "3 of them have their final values only" in n for n in rep.notes)


def test_a_killed_cell_goes_back_before_new_ones(trained, tmp_path):
    """A runner re-queues a killed cell behind every waiting one; restoring again (workers stopped) puts the
    queue back in plan order, superseding the old entries, and appends only while a worker is alive."""
    from optuna.trial import TrialState

    plan = trained["plan"]
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = [c for c in read_export(trained["rep"].folder / CELLS_FILE) if c.key == "full seed=100"]
    out = restore_study(plan, first, source="x", storage_url=storage, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert out.queued == ["no_magp seed=100", "full seed=101", "no_magp seed=101"]
    study = optuna.load_study(study_name="tiny", storage=storage)
    killed = study.ask()  # what a runner does with the first queued cell, then it is killed and re-queued
    assert killed.suggest_categorical(f"variant@{plan.grid}", plan.labels) == "no_magp"
    killed.suggest_categorical(f"seed@{plan.grid}", plan.seeds)
    killed.set_user_attr("outcome", "failed")
    study.tell(killed, state=TrialState.FAIL)
    study.enqueue_trial(dict(killed.params), user_attrs={"spec_hash": plan.entry("no_magp", 100).hash})

    def queue() -> list[str]:
        waiting = optuna.load_study(study_name="tiny", storage=storage).get_trials(states=(TrialState.WAITING,))
        fixed = [t.system_attrs["fixed_params"] for t in waiting]
        return [f"{f[f'variant@{plan.grid}']} {f[f'seed@{plan.grid}']}" for f in fixed]

    assert queue() == ["full 101", "no_magp 101", "no_magp 100"]
    again = restore_study(plan, first, source="x", storage_url=storage, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert again.restored == [] and again.superseded == 3
    assert queue() == ["no_magp 100", "full 101", "no_magp 101"]
    assert {r["status"] for r in study_status(plan, storage)} == {"done", "queued"}

    live = study.ask()  # a live worker holds a cell: nothing is pruned under it, nothing queued twice
    live.suggest_categorical(f"variant@{plan.grid}", plan.labels)
    live.set_user_attr("spec_hash", plan.entry("no_magp", 100).hash)
    live.set_user_attr("outcome", "running")
    live.set_user_attr("worker", __import__("dfgan.studies.ledger", fromlist=["x"]).worker_identity())
    third = restore_study(plan, first, source="x", storage_url=storage, tracking_uri=f"sqlite:///{tmp_path / 'm.db'}")
    assert third.superseded == 0 and third.queued == [] and queue() == ["full 101", "no_magp 101"]
