"""Stop signals and the MLflow store: a Ctrl-C or SIGTERM that arrives during a write, or while the run is being
opened, is taken once the write is done (``dfgan.runtime.signals_held``), so the store is never left locked and
the run ends KILLED."""

from __future__ import annotations

import os
import signal
import threading

import mlflow
import pytest

from dfgan import runtime
from dfgan.experiment import resolve_spec
from dfgan.tracking import Tracker
from dfgan.tracking_buffer import RunWriter
from tests.conftest import tiny_overrides


def _uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _spec(tmp_path):
    return resolve_spec("full", overrides=tiny_overrides(tmp_path))


def _run_to_write(tmp_path):
    client = mlflow.tracking.MlflowClient(_uri(tmp_path))
    run_id = client.create_run(client.create_experiment("held")).info.run_id
    return client, run_id, RunWriter(_uri(tmp_path), run_id, tmp_path / "spool.jsonl")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_during_a_write_waits_for_the_write(tmp_path, signum):
    """The CI failure of test_sigterm_marks_the_run_killed: a SIGTERM that lands inside an MLflow write left the
    SQLite store locked, so the run was never marked KILLED and the process took minutes to stop. A signal that
    arrives during a write now ends the process once the write is done; a second one interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")
    client, run_id, writer = _run_to_write(tmp_path)
    real = writer.client.log_batch
    sent: list[int] = []

    def signal_then_write(*args, **kw):
        for _ in range(kills):
            os.kill(os.getpid(), signum)  # delivered before the write starts, had it not been held
        real(*args, **kw)
        sent.append(1)

    writer.client.log_batch = signal_then_write
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # SIGINT is ignored under nohup
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # what an interactive Python has
        runtime.sigterm_as_interrupt()
        installed = {s: signal.getsignal(s) for s in before}
        kills = 1
        with pytest.raises(KeyboardInterrupt):
            writer.metrics({"loss": 1.0}, step=3)
        assert sent == [1] and [m.step for m in client.get_metric_history(run_id, "loss")] == [3]
        kills = 2
        with pytest.raises(KeyboardInterrupt):
            writer.metrics({"loss": 2.0}, step=4)
        assert sent == [1]  # the second signal interrupted before the write
        assert {s: signal.getsignal(s) for s in before} == installed  # the handlers are put back
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    writer.client.log_batch = real
    writer.end("KILLED")  # the store is not left locked
    assert client.get_run(run_id).info.status == "KILLED"


def test_a_sigterm_while_the_run_is_opened_ends_it_killed(tmp_path, monkeypatch):
    """Held while the MLflow run is opened, a SIGTERM is taken once the tracker can end the run: KILLED, not left
    RUNNING."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are installed from the main thread only")
    real, opened = Tracker._open, []

    def open_then_signal(self, spec, run_id):
        out = real(self, spec, run_id)
        opened.append(out[0])
        os.kill(os.getpid(), signal.SIGTERM)  # as if it came while the run was being created
        return out

    monkeypatch.setattr(Tracker, "_open", open_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    try:
        runtime.sigterm_as_interrupt()
        spec = _spec(tmp_path)
        with pytest.raises(KeyboardInterrupt), Tracker(uri=_uri(tmp_path), out_dir=tmp_path) as tracker:
            tracker.start(spec, "h", {})
    finally:
        signal.signal(signal.SIGTERM, before)
    assert mlflow.tracking.MlflowClient(_uri(tmp_path)).get_run(opened[0]).info.status == "KILLED"
