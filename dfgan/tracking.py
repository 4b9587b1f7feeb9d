"""MLflow: explicit tracking URI, run layout, tags, params, metrics and artifacts.

Default URI: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<out_dir>/mlflow.db`` with artifacts under
``<out_dir>/mlartifacts`` (MLflow's own default of ``./mlruns`` next to wherever you happen to stand is
avoided on purpose). Only the main process of a distributed run logs.
"""

from __future__ import annotations

import os
import subprocess
import traceback
from pathlib import Path
from typing import Any

MAX_PARAMS_PER_CALL = 100  # MLflow's batch limit


def default_uri(out_dir: str | Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def resolve_uri(uri: str | None, out_dir: str | Path) -> str:
    return uri or default_uri(out_dir)


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def setup(uri: str, experiment: str, out_dir: str | Path):
    """Point MLflow at ``uri`` and make sure ``experiment`` exists (artifacts beside a local SQLite DB)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        try:
            mlflow.create_experiment(experiment, artifact_location=location)
        except Exception:  # created concurrently by another worker
            if mlflow.get_experiment_by_name(experiment) is None:
                raise
    mlflow.set_experiment(experiment)
    return mlflow


class Tracker:
    """One MLflow run for one training run (resumable: reopens the run id kept in the checkpoint)."""

    def __init__(self, spec, *, enabled: bool = True, uri: str | None = None, run_id: str | None = None,
                 parent_run_id: str | None = None, extra_tags: dict[str, Any] | None = None):
        self.spec = spec
        self.enabled = enabled
        self.uri = resolve_uri(uri or spec.tracking.uri, spec.train.out_dir)
        self.run_id = run_id
        self.parent_run_id = parent_run_id
        self.extra_tags = extra_tags or {}
        self._client = None

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, tags: dict[str, Any]) -> str | None:
        if not self.enabled:
            return None
        mlflow = setup(self.uri, self.spec.tracking.experiment, self.spec.train.out_dir)
        self._client = mlflow.tracking.MlflowClient(self.uri)
        if self.run_id:
            run = mlflow.start_run(run_id=self.run_id)
        else:
            run = mlflow.start_run(run_name=self.spec.name, parent_run_id=self.parent_run_id,
                                   nested=self.parent_run_id is not None)
            params = {k: str(v) for k, v in self.spec.flat().items()}
            items = list(params.items())
            for i in range(0, len(items), MAX_PARAMS_PER_CALL):
                mlflow.log_params(dict(items[i:i + MAX_PARAMS_PER_CALL]))
            mlflow.log_text(self.spec.to_yaml(), "spec.yaml")
        self.run_id = run.info.run_id
        all_tags = {"variant": self.spec.name, "spec_hash": self.spec.hash(), "git_commit": git_commit()}
        all_tags.update(tags)
        all_tags.update(self.extra_tags)
        mlflow.set_tags({k: str(v) for k, v in all_tags.items()})
        return self.run_id

    def finish(self) -> None:
        if self.enabled:
            import mlflow

            mlflow.end_run(status="FINISHED")

    def fail(self, error: BaseException) -> None:
        """Mark the run FAILED, keeping the error text and traceback."""
        if not self.enabled or self.run_id is None:
            return
        import mlflow

        text = "".join(traceback.format_exception(error))
        try:
            mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
            mlflow.log_text(text, "error.txt")
        finally:
            mlflow.end_run(status="FAILED")

    def kill(self) -> None:
        if self.enabled and self.run_id is not None:
            import mlflow

            mlflow.end_run(status="KILLED")

    # -- logging -----------------------------------------------------------------------------------------------
    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def tags(self, values: dict[str, Any]) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tags({k: str(v) for k, v in values.items()})

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)

    def text(self, text: str, name: str) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_text(text, name)
