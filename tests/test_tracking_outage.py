"""Tracking outages fail soft: a real `mlflow server` on 127.0.0.1 is killed mid-run. Training goes on; what it
logs is kept and sent when the server is back (or, after a time limit, written to a local file that
`dfgan tracking replay` sends later); every metric point arrives once."""

from __future__ import annotations

import shutil

import mlflow
import pytest

from dfgan import runs
from dfgan import tracking_buffer as tb
from dfgan.cli import main
from dfgan.experiment import resolve_spec
from dfgan.run_identity import run_folder
from dfgan.tracking import Tracker
from dfgan.train.loop import train
from dfgan.train.step import Stepper
from tests.conftest import tiny_overrides
from tests.servers import MlflowServer

pytestmark = pytest.mark.slow

STEPS = 24
DOWN_AT, UP_AT = 6, 14  # the server is killed after this step, and started again after this one


@pytest.fixture(scope="module")
def _template_db(tmp_path_factory):
    """A migrated MLflow database, copied for each server (a server migrates a new one for ~20 s)."""
    folder = tmp_path_factory.mktemp("template")
    mlflow.tracking.MlflowClient(f"sqlite:///{folder / 'server.db'}").search_experiments()
    return folder / "server.db"


@pytest.fixture
def server(tmp_path, _template_db):
    folder = tmp_path / "server"
    folder.mkdir()
    shutil.copy(_template_db, folder / "server.db")
    s = MlflowServer(folder, f"sqlite:///{folder / 'server.db'}")
    s.start()
    yield s
    s.stop()


def _outage_during_training(monkeypatch, server: MlflowServer, *, restart: bool) -> None:
    real = Stepper.__call__

    def call(self, step, *args):
        out = real(self, step, *args)
        if step + 1 == DOWN_AT:
            server.kill()
        if step + 1 == UP_AT and restart:
            server.start()
        return out

    monkeypatch.setattr(Stepper, "__call__", call)


def _spec(tmp_path):
    return resolve_spec("full", overrides=tiny_overrides(tmp_path, **{
        "train.steps": STEPS, "train.checkpoint_every": 8, "train.sample_every": 12, "eval.metrics": "[]"}))


def _assert_every_step_once(url: str, run_id: str) -> None:
    client = mlflow.tracking.MlflowClient(url)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in ("loss_g", "loss_d", "d_gp"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, STEPS + 1)), (key, steps)
    assert "samples" in {a.path for a in client.list_artifacts(run_id)}


def test_server_killed_and_back_nothing_lost(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setattr(tb, "RETRY_EVERY_S", 0.2)
    _outage_during_training(monkeypatch, server, restart=True)
    spec = _spec(tmp_path)
    res = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=server.url))
    err = capsys.readouterr().err
    assert "is unreachable" in err and "answers again" in err and "nothing lost" in err, err
    _assert_every_step_once(server.url, res.run_id)
    assert not (run_folder(spec) / runs.SPOOL).exists()


def test_long_outage_goes_to_a_file_replayed_later(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setattr(tb, "SPOOL_AFTER_S", 0.0)  # at once to the file
    _outage_during_training(monkeypatch, server, restart=False)
    spec = _spec(tmp_path)
    res = train(spec, progress=False, tracker=Tracker.for_spec(spec, uri=server.url))
    spool = run_folder(spec) / runs.SPOOL
    err = capsys.readouterr().err
    assert spool.is_file() and f"dfgan tracking replay {spool}" in err, err
    assert res.steps == STEPS and (run_folder(spec) / runs.FINAL_RECORD).is_file()  # training went on
    with pytest.raises(runs.RunExistsError, match=f"holds {runs.SPOOL}: metrics of its MLflow run"):
        train(spec, restart=True, progress=False, tracker=Tracker.for_spec(spec, uri=server.url))
    assert spool.is_file()  # --restart never deletes what was not sent

    server.start()
    assert main(["tracking", "replay", str(spool)]) == 0
    _assert_every_step_once(server.url, res.run_id)
    replayed = spool.with_name(spool.name + ".replayed")
    assert replayed.is_file() and not spool.exists()
    assert main(["tracking", "replay", str(replayed)]) == 0  # twice: nothing sent twice
    _assert_every_step_once(server.url, res.run_id)
    client = mlflow.tracking.MlflowClient(server.url)
    assert len(client.get_metric_history(res.run_id, "loss_g")) == STEPS
