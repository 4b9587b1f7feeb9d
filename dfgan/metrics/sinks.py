"""Where evaluation values go besides ``metrics.jsonl``: the MLflow run of a training ``Tracker``, or an existing
run by id (``dfgan eval`` on a finished run). Each sink has ``log(values, tags, step)``."""

from __future__ import annotations

import time

from dfgan.runtime import signals_held


class TrackerSink:
    """Logs into the active MLflow run of a training ``Tracker``."""

    def __init__(self, tracker):
        self.tracker = tracker

    def log(self, values: dict[str, float], tags: dict[str, str], step: int) -> None:
        self.tracker.metrics(values, step)
        self.tracker.tags(tags)


class ClientSink:
    """Logs into an existing MLflow run by id (without changing its status): ``dfgan eval`` on a finished run."""

    def __init__(self, uri: str, run_id: str):
        import mlflow

        self.client = mlflow.tracking.MlflowClient(uri)
        self.run_id, self.uri = run_id, uri
        try:
            self.client.get_run(run_id)
        except Exception as e:  # mlflow raises MlflowException for a missing run
            raise ValueError(f"MLflow run {run_id} (from the checkpoint) not found at {uri}: pass the tracking "
                             f"URI the run was logged to with --tracking-uri ({type(e).__name__}: {e})") from None

    def log(self, values: dict[str, float], tags: dict[str, str], step: int) -> None:
        from mlflow.entities import Metric, RunTag

        ts = int(time.time() * 1000)
        with signals_held():  # not stopped half-way (see dfgan.tracking_buffer.RunWriter.send)
            self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step) for k, v in values.items()],
                                  tags=[RunTag(k, str(v)) for k, v in tags.items()])
