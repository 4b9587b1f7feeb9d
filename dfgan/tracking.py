"""MLflow: explicit tracking URI, run layout, tags, params, metrics and artifacts.

Default URI: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<out_dir>/mlflow.db`` with artifacts under
``<out_dir>/mlartifacts`` (MLflow's own default of ``./mlruns`` next to wherever you happen to stand is
avoided on purpose). Only the main process of a distributed run logs.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path
from typing import Any

from dfgan import fingerprint
from dfgan.spec import BUILTIN_ONLY_DATA_FIELDS

MAX_PARAMS_PER_CALL = 100  # MLflow's batch limit


def default_uri(out_dir: str | Path) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def resolve_uri(uri: str | None, out_dir: str | Path) -> str:
    return uri or default_uri(out_dir)


def git_commit() -> str:
    """The commit of the code this process imported (``<sha>[-dirty]``), read once at ``import dfgan``
    (``dfgan.fingerprint.CODE``), not git HEAD now: a checkout can move under a long-running worker."""
    return fingerprint.CODE.label


def code_tags() -> dict[str, str]:
    """``git_commit`` and, when the imported code had uncommitted changes, the sha256 of their diff (the diff
    itself is the run's artifact ``code/<sha256>.diff``)."""
    code = fingerprint.CODE
    return {"git_commit": code.label, **({"code_diff_sha256": code.diff_sha256} if code.dirty else {})}


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
    """One MLflow run (resumable: ``start(run_id=...)`` reopens the run kept in a checkpoint), and a context
    manager that ends it in one place: FINISHED when the block completes, KILLED on an interrupt, FAILED (with
    the error text and traceback as ``error.txt``) on any other exception. Disabled, every call is a no-op."""

    def __init__(self, *, experiment: str = "dfgan", uri: str | None = None, out_dir: str | Path = "runs",
                 enabled: bool = True, parent_run_id: str | None = None, extra_tags: dict[str, Any] | None = None):
        self.experiment, self.out_dir, self.enabled = experiment, out_dir, enabled
        self.uri = resolve_uri(uri, out_dir)
        self.parent_run_id = parent_run_id
        self.extra_tags = extra_tags or {}
        self.run_id: str | None = None
        self._active = False

    @classmethod
    def for_spec(cls, spec, *, enabled: bool | None = None, uri: str | None = None, experiment: str | None = None,
                 parent_run_id: str | None = None, extra_tags: dict[str, Any] | None = None) -> Tracker:
        """The tracker ``spec.tracking`` asks for; arguments that are not None override it."""
        return cls(experiment=experiment or spec.tracking.experiment, uri=uri or spec.tracking.uri,
                   out_dir=spec.train.out_dir, enabled=spec.tracking.enabled if enabled is None else enabled,
                   parent_run_id=parent_run_id, extra_tags=extra_tags)

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self, spec, run_hash: str, tags: dict[str, Any], run_id: str | None = None) -> str | None:
        """Open the run (``run_id``: reopen it, else a new run named after the spec with every spec field as a
        param and ``spec.yaml``), tagged with the variant, the run hash, the commit of the code this process
        imported (and its diff, when dirty: ``code_tags``) and ``tags``."""
        if not self.enabled:
            return None
        mlflow = setup(self.uri, self.experiment, self.out_dir)
        if run_id:
            run = mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(run_name=spec.name, parent_run_id=self.parent_run_id,
                                   nested=self.parent_run_id is not None)
            items = [(k, str(v)) for k, v in spec.flat().items()  # a real dataset's counts: logged by train
                     if spec.data.name == "builtin" or k.removeprefix("data.") not in BUILTIN_ONLY_DATA_FIELDS]
            for i in range(0, len(items), MAX_PARAMS_PER_CALL):
                mlflow.log_params(dict(items[i:i + MAX_PARAMS_PER_CALL]))
            mlflow.log_text(spec.to_yaml(), "spec.yaml")
        self.run_id, self._active = run.info.run_id, True
        all_tags = {"variant": spec.name, "spec_hash": run_hash, **code_tags(), **tags, **self.extra_tags}
        mlflow.set_tags({k: str(v) for k, v in all_tags.items()})
        if fingerprint.CODE.dirty:  # the uncommitted code this process runs, kept with the run
            mlflow.log_text(fingerprint.CODE.diff, f"code/{fingerprint.CODE.diff_sha256}.diff")
        return self.run_id

    def _end(self, status: str) -> None:
        if self.enabled and self._active:
            import mlflow

            mlflow.end_run(status=status)
            self._active = False

    def finish(self) -> None:
        self._end("FINISHED")

    def fail(self, error: BaseException) -> None:
        """Mark the run FAILED, keeping the error text and traceback."""
        if not (self.enabled and self._active):
            return
        import mlflow

        text = "".join(traceback.format_exception(error))
        try:
            mlflow.set_tag("error", f"{type(error).__name__}: {error}"[:5000])
            mlflow.log_text(text, "error.txt")
        finally:
            self._end("FAILED")

    def kill(self) -> None:
        self._end("KILLED")

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None:
            self.finish()
        elif isinstance(exc, KeyboardInterrupt):
            self.kill()
        else:
            self.fail(exc)
        return False

    # -- logging -----------------------------------------------------------------------------------------------
    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics({k: float(v) for k, v in values.items()}, step=step)

    def params(self, values: dict[str, Any]) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_params({k: str(v) for k, v in values.items()})

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
