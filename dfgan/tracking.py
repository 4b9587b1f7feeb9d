"""MLflow: explicit tracking URI, run layout, tags, params, metrics and artifacts.

Default URI: ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<out_dir>/mlflow.db`` with artifacts under
``<out_dir>/mlartifacts`` (MLflow's own default of ``./mlruns`` next to wherever you happen to stand is
avoided on purpose). Only the main process of a distributed run logs.
"""

from __future__ import annotations

import fcntl
import os
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from dfgan import fingerprint
from dfgan.runtime import signals_held
from dfgan.spec import BUILTIN_ONLY_DATA_FIELDS
from dfgan.tracking_buffer import RunWriter, TrackingError, shorten_http_retries

MAX_PARAMS_PER_CALL = 100  # MLflow's batch limit
SETUP_ATTEMPTS = 6  # a database server's schema set up by several workers at once: retries with backoff
_RACE_WORDS = ("already exists", "duplicate", "unique constraint", "integrityerror", "alembic_version",
               "migration", "deadlock", "could not serialize", "database is locked")
T = TypeVar("T")


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL (SQLAlchemy's and MLflow's form); None for any other URL."""
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///"):].split("?", 1)[0]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


def set_up_once(url: str, create: Callable[[], T]) -> T:
    """``create()`` (which opens a database and creates or migrates its schema) safely when several workers
    start together: under an exclusive lock on ``<db>.lock`` beside a SQLite file (the first worker creates
    the tables, the others wait and find them), else retried with backoff when it loses a race on a database
    server (duplicate table or column, alembic version row, serialization failure)."""
    db = sqlite_file(url)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                return create()
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
    for attempt in range(SETUP_ATTEMPTS):
        try:
            return create()
        except Exception as e:
            text = f"{type(e).__name__}: {e}".lower()
            if attempt == SETUP_ATTEMPTS - 1 or not any(w in text for w in _RACE_WORDS):
                raise
            time.sleep(0.5 * 2 ** attempt * (1 + random.random()))
    raise AssertionError("unreachable")


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
    """Point MLflow at ``uri`` and make sure ``experiment`` exists (artifacts beside a local SQLite DB); the
    store's schema is created or migrated once when several workers start together (``set_up_once``)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = set_up_once(uri, lambda: mlflow.get_experiment_by_name(experiment))
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
    manager that ends it in one place: FINISHED when the block completes, KILLED on an interrupt (SIGINT, or
    SIGTERM through ``dfgan.runtime.sigterm_as_interrupt``) or when the run stopped before its end
    (``incomplete``), FAILED (with the error text and traceback as ``error.txt``) on any other exception.
    Disabled, every call is a no-op.

    Opening the run needs the store; after that every call goes through a ``RunWriter``
    (``dfgan.tracking_buffer``): an outage of the store is buffered, then spooled to ``spool_path`` (default
    ``<out_dir>/mlflow-spool-<run id>.jsonl``), and training goes on. A reopened run logs each metric at each
    step once: a point whose (key, step) the run already holds is skipped. A resumed run recomputes the steps
    between its checkpoint and the kill, bit for bit; MLflow cannot delete points, so the second copy is never
    sent."""

    def __init__(self, *, experiment: str = "dfgan", uri: str | None = None, out_dir: str | Path = "runs",
                 enabled: bool = True, parent_run_id: str | None = None, extra_tags: dict[str, Any] | None = None):
        self.experiment, self.out_dir, self.enabled = experiment, out_dir, enabled
        self.uri = resolve_uri(uri, out_dir)
        self.parent_run_id = parent_run_id
        self.extra_tags = extra_tags or {}
        self.run_id: str | None = None
        self.incomplete: str | None = None  # why the run stopped before its end (ended KILLED), if it did
        self.spool_path: Path | None = None
        self._writer: RunWriter | None = None

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
        imported (and its diff, when dirty: ``code_tags``) and ``tags``. A store that cannot be opened raises
        ``TrackingError`` naming it."""
        if not self.enabled:
            return None
        with signals_held():  # a stop signal now is taken once the run has its writer: the run then ends KILLED
            try:
                run_id, reopened = self._open(spec, run_id)
            except TrackingError:
                raise
            except Exception as e:  # unreachable server, a full disk under a SQLite file, a bad URI, ...
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                raise TrackingError(f"cannot open the MLflow tracking store {self.uri} (experiment "
                                    f"'{self.experiment}'): {first}; fix it or pass --no-track") from None
            self.run_id = run_id
            shorten_http_retries()
            spool = self.spool_path or Path(self.out_dir) / f"mlflow-spool-{run_id}.jsonl"
            self._writer = RunWriter(self.uri, run_id, spool, dedupe=reopened)
        if not reopened:
            items = [(k, str(v)) for k, v in spec.flat().items()  # a real dataset's counts: logged by train
                     if spec.data.name == "builtin" or k.removeprefix("data.") not in BUILTIN_ONLY_DATA_FIELDS]
            for i in range(0, len(items), MAX_PARAMS_PER_CALL):
                self._writer.params(dict(items[i:i + MAX_PARAMS_PER_CALL]))
            self._writer.text(spec.to_yaml(), "spec.yaml")
        self.tags({"variant": spec.name, "spec_hash": run_hash, **code_tags(), **tags, **self.extra_tags})
        if fingerprint.CODE.dirty and not reopened:  # the uncommitted code this process runs, kept with the run
            self._writer.text(fingerprint.CODE.diff, f"code/{fingerprint.CODE.diff_sha256}.diff")
        return self.run_id

    def _open(self, spec, run_id: str | None) -> tuple[str, bool]:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.tracking.context.registry import resolve_tags

        setup(self.uri, self.experiment, self.out_dir)
        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        if run_id:
            try:
                old = client.get_run(run_id).info
            except MlflowException as e:
                if getattr(e, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
                old, why = None, f"is not at {self.uri} any more"
            else:  # a run folder opened by another study's worker (a shared cell), or a run deleted since
                why = (f"belongs to another experiment (id {old.experiment_id}, not '{self.experiment}')"
                       if old.experiment_id != exp.experiment_id else
                       "was deleted" if old.lifecycle_stage != "active" else "")
            if not why:
                client.update_run(run_id, status="RUNNING")
                return run_id, True
            print(f"dfgan: warning: MLflow run {run_id} {why}; logging to a new run", file=sys.stderr)
        extra = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else {}
        run = client.create_run(exp.experiment_id, run_name=spec.name, tags=resolve_tags(extra))
        return run.info.run_id, False

    def _end(self, status: str) -> None:
        if self.enabled and self._writer is not None:
            writer, self._writer = self._writer, None
            writer.end(status)
            writer.close()

    def finish(self) -> None:
        self._end("FINISHED")

    def fail(self, error: BaseException) -> None:
        """Mark the run FAILED, keeping the error text and traceback."""
        if not (self.enabled and self._writer is not None):
            return
        text = "".join(traceback.format_exception(error))
        try:
            self._writer.tags({"error": f"{type(error).__name__}: {error}"[:5000]})
            self._writer.text(text, "error.txt")
        finally:
            self._end("FAILED")

    def kill(self) -> None:
        self._end("KILLED")

    def end_stale(self, run_id: str, reason: str) -> bool:
        """Mark run ``run_id`` KILLED with tag ``stopped=reason`` if it is still RUNNING (a process that died
        left it so); True if it was."""
        if not self.enabled or not run_id:
            return False
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        try:
            if client.get_run(run_id).info.status != "RUNNING":
                return False
            client.set_tag(run_id, "stopped", reason)
            client.set_terminated(run_id, "KILLED")
        except Exception:  # not in this store (another URI, or deleted), or the store is away: left as it is
            return False
        return True

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None and self.incomplete:
            self.tags({"stopped": self.incomplete})
            self.kill()
        elif exc is None:
            self.finish()
        elif isinstance(exc, KeyboardInterrupt):
            self.kill()
        else:
            self.fail(exc)
        return False

    # -- logging -----------------------------------------------------------------------------------------------
    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.enabled and self._writer is not None:
            self._writer.metrics(values, step)

    def params(self, values: dict[str, Any]) -> None:
        if self.enabled and self._writer is not None:
            self._writer.params(values)

    def tags(self, values: dict[str, Any]) -> None:
        if self.enabled and self._writer is not None:
            self._writer.tags(values)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled and self._writer is not None:
            self._writer.artifact(path, artifact_path)

    def text(self, text: str, name: str) -> None:
        if self.enabled and self._writer is not None:
            self._writer.text(text, name)
