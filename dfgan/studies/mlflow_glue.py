"""Our Optuna-to-MLflow glue (optuna-integration's MLflowCallback is deprecated).

Layout: one MLflow experiment per study (named after it); one parent run per invocation of ``dfgan ablate``
or ``dfgan search`` (tag ``role=invocation``: who ran what, where, with which storage); one nested run per cell
(tag ``role=cell``), written by the training loop itself with the extra tags from :func:`cell_tags`.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any

from dfgan.runtime import cpu_model
from dfgan.tracking import git_commit, setup

ROLE_INVOCATION = "invocation"
ROLE_CELL = "cell"


def hardware() -> dict[str, str]:
    """Host, OS, CPU model and count, torch threads and any CUDA device: the provenance of timings."""
    info = {"host": socket.gethostname(), "platform": platform.platform(), "python": platform.python_version(),
            "cpu_count": str(os.cpu_count())}
    info["cpu"] = cpu_model() or "unknown"
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = str(torch.get_num_threads())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def command_line() -> str:
    """The command as typed: ``dfgan <args>`` when run through the CLI, else the interpreter's argv."""
    argv = list(sys.argv)
    if argv and (argv[0].endswith(("dfgan", "__main__.py"))):
        return "dfgan " + " ".join(argv[1:])
    return " ".join(argv)


def cell_tags(*, study: str, cell, seed: int, trial_number: int, grid: str | None, overrides: list[str],
              kind: str, storage: str) -> dict[str, Any]:
    tags = {"role": ROLE_CELL, "study": study, "study_kind": kind, "variant": cell.label,
            "base_variant": cell.variant, "seed": seed, "trial": trial_number, "optuna_storage": storage,
            "overrides": " ".join(overrides), "host": socket.gethostname()}
    if grid:
        tags["grid"] = grid
    for axis, level in cell.factors:
        tags[f"factor.{axis}"] = level
    return tags


class InvocationRun:
    """The parent MLflow run of one invocation, made with the client (no fluent active run, so the cells'
    own runs, started by the training loop, can nest under it and be reopened on resume)."""

    def __init__(self, uri: str, study: str, out_dir: str, tags: dict[str, Any]):
        self.uri, self.study, self.out_dir, self.tags = uri, study, out_dir, tags
        self.run_id: str | None = None
        self._client = None

    def start(self) -> str:
        if self.run_id:
            return self.run_id
        import mlflow

        setup(self.uri, self.study, self.out_dir)
        self._client = mlflow.tracking.MlflowClient(self.uri)
        exp = self._client.get_experiment_by_name(self.study)
        tags = {"role": ROLE_INVOCATION, "study": self.study, "git_commit": git_commit(),
                "command": command_line(), **{f"hw.{k}": v for k, v in hardware().items()}, **self.tags}
        run = self._client.create_run(exp.experiment_id, run_name=f"{self.study} invocation",
                                      tags={k: str(v) for k, v in tags.items()})
        self.run_id = run.info.run_id
        return self.run_id

    @property
    def client(self):
        """The MlflowClient of the started run (for runs logged beside it, e.g. restored cells)."""
        if self._client is None:
            raise RuntimeError("InvocationRun.client: call start() first")
        return self._client

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self.run_id:
            for k, v in tags.items():
                self._client.set_tag(self.run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self._client.set_terminated(self.run_id, status)


def cell_runs(uri: str, study: str, filter_string: str = "", max_results: int = 5000):
    """The cell runs of a study as a DataFrame (``params.*``, ``metrics.*``, ``tags.*``); empty if none."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(study) is None:
        return pd.DataFrame()
    f = f"tags.role = '{ROLE_CELL}'" + (f" and {filter_string}" if filter_string else "")
    return mlflow.search_runs(experiment_names=[study], filter_string=f, max_results=max_results)


def cell_commits(uri: str, studies: list[str]) -> dict[str, dict[str, int]]:
    """``git_commit`` tag (the code each cell run imported) -> {run status: number of cell runs}, over the
    MLflow experiments of ``studies`` (a run shared by two studies lives in one experiment: counted once)."""
    return cell_tag_counts(uri, studies, "git_commit")


def cell_tag_counts(uri: str, studies: list[str], tag: str) -> dict[str, dict[str, int]]:
    """A tag's value -> {run status: number of cell runs} over the cell runs of ``studies`` ("unknown" where a
    run lacks it); e.g. ``speed_precision``, the precision each cell trained in."""
    out: dict[str, dict[str, int]] = {}
    for study in studies:
        runs = cell_runs(uri, study)
        if runs.empty:
            continue
        values = runs[f"tags.{tag}"] if f"tags.{tag}" in runs else [None] * len(runs)
        for value, status in zip(values, runs["status"], strict=True):
            by_status = out.setdefault(str(value) if isinstance(value, str) and value else "unknown", {})
            by_status[status] = by_status.get(status, 0) + 1
    return out


def cell_metrics(result, uri: str) -> dict[str, float]:
    """A trained cell's metrics: its final evaluation and last losses as training returned them; the MLflow
    run's latest values only when the run had nothing left to train (a resumed, already finished cell)."""
    if result.evaluation:
        return {**result.last_losses, **result.evaluation}
    return run_metrics(uri, result.run_id) if result.run_id else dict(result.last_losses)


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    import mlflow

    return dict(mlflow.tracking.MlflowClient(uri).get_run(run_id).data.metrics)


def mark_runs(uri: str, study: str, trial_number: int, status: str, tags: dict[str, Any],
              only_status: str | None = None, parents: bool = False) -> int:
    """Set status and tags on the cell runs of one trial (e.g. a pruned or a dead worker's run); with
    ``parents``, also end their still-running invocation runs with the same status."""
    import mlflow

    f = f"tags.trial = '{trial_number}'" + (f" and attributes.status = '{only_status}'" if only_status else "")
    runs = cell_runs(uri, study, f)
    client = mlflow.tracking.MlflowClient(uri)
    for run_id in runs.get("run_id", []):
        for k, v in tags.items():
            client.set_tag(run_id, k, str(v))
        client.set_terminated(run_id, status)
    if parents and "tags.mlflow.parentRunId" in runs:
        for pid in set(runs["tags.mlflow.parentRunId"].dropna()):
            if client.get_run(pid).info.status == "RUNNING":
                client.set_tag(pid, "stopped", "worker process gone")
                client.set_terminated(pid, status)
    return len(runs)
