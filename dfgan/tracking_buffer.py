"""Writing to one MLflow run without losing a point, or stalling training, when the tracking store goes away.

``RunWriter`` sends each logging operation (metrics with their step and time, tags, params, artifacts, text, the
final status) to the run through ``MlflowClient``. When a send fails for a reason of the store's (a refused or
timed-out connection, a 5xx, a locked or full SQLite file) it warns once and keeps the operations in memory, in
order, retrying after ``RETRY_EVERY_S`` seconds (the wait doubling after each failed try, up to 8 times that, so
that a server that hangs rather than refuses costs training little); when the store answers again the buffer
is sent and a second line says so. An outage longer than ``SPOOL_AFTER_S`` seconds (or ``MAX_BUFFERED``
operations) moves everything to a local JSONL file, and everything after it too, without further tries:
training never waits on the store for more than one short attempt. ``dfgan tracking replay FILE``
(``replay``) sends such a file later; metric points the run already holds are skipped, so a file can be
replayed twice.

While a run logs, MLflow's own HTTP retries are shortened (``HTTP_DEFAULTS``, unless set in the environment):
by default one call retries for about 12 minutes before it fails.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dfgan.runtime import signals_held

RETRY_EVERY_S = 15.0
SPOOL_AFTER_S = 120.0
MAX_BUFFERED = 20000
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
# MLflow error codes that are the request's fault, not the store's: raised, never buffered
REQUEST_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE",
                  "BAD_REQUEST", "MALFORMED_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED"}


class TrackingError(RuntimeError):
    """The MLflow tracking store cannot be opened or written when a run starts, or a spool file cannot be
    replayed; the message names the URI or the file."""


def _warn(text: str) -> None:
    print(f"dfgan: {text}", file=sys.stderr, flush=True)


def is_outage(error: BaseException) -> bool:
    """Whether a failed MLflow call is the store's fault (unreachable, overloaded, locked): worth retrying."""
    code = getattr(error, "error_code", None)
    return not (isinstance(code, str) and code in REQUEST_ERRORS)


def shorten_http_retries() -> None:
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


class RunWriter:
    """The logging operations of one MLflow run (see the module docstring). ``dedupe``: skip metric points
    whose (key, step) the run already holds (a reopened run; always on in a replay)."""

    def __init__(self, uri: str, run_id: str, spool: str | Path, *, dedupe: bool = False,
                 retry_every: float | None = None, spool_after: float | None = None, max_buffered: int | None = None,
                 warn: Callable[[str], None] = _warn):
        from mlflow.tracking import MlflowClient

        self.uri, self.run_id, self.spool = uri, run_id, Path(spool)
        self.client = MlflowClient(uri)
        self.dedupe = dedupe
        self.retry_every = RETRY_EVERY_S if retry_every is None else retry_every
        self.spool_after = SPOOL_AFTER_S if spool_after is None else spool_after
        self.max_buffered = MAX_BUFFERED if max_buffered is None else max_buffered
        self.warn = warn
        self.buffer: deque[dict[str, Any]] = deque()
        self.down_since: float | None = None
        self.last_try, self.wait = 0.0, self.retry_every
        self.spooling = False
        self._logged: dict[str, set[int]] = {}

    # -- operations ----------------------------------------------------------------------------------------------
    def metrics(self, values: dict[str, float], step: int) -> None:
        self.put({"op": "metrics", "values": {k: float(v) for k, v in values.items()}, "step": int(step),
                  "ts": int(time.time() * 1000)})

    def tags(self, values: dict[str, Any]) -> None:
        self.put({"op": "tags", "values": {k: str(v) for k, v in values.items()}})

    def params(self, values: dict[str, Any]) -> None:
        self.put({"op": "params", "values": {k: str(v) for k, v in values.items()}})

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.put({"op": "artifact", "path": str(Path(path).resolve()), "artifact_path": artifact_path})

    def text(self, text: str, name: str) -> None:
        self.put({"op": "text", "text": text, "name": name})

    def end(self, status: str) -> None:
        self.put({"op": "end", "status": status})

    # -- sending, buffering, spooling ------------------------------------------------------------------------------
    def put(self, op: dict[str, Any]) -> None:
        if self.spooling:
            self._append_spool([op])
            return
        if self.buffer:  # in an outage: keep the order
            self.buffer.append(op)
            if len(self.buffer) >= self.max_buffered or time.time() - self.down_since >= self.spool_after:
                self._spill()
            elif time.time() - self.last_try >= self.wait:
                self.flush()
            return
        try:
            self.send(op)
        except Exception as e:
            if not is_outage(e):
                raise
            self.down_since, self.last_try, self.wait = time.time(), time.time(), self.retry_every
            self.buffer.append(op)
            self.warn(f"warning: MLflow at {self.uri} is unreachable ({_first_line(e)}); training goes on, "
                      f"metrics are kept here and sent when it answers (after {self.spool_after:.0f} s they go "
                      f"to {self.spool})")

    def flush(self) -> bool:
        """Send what is buffered, oldest first; True when nothing is left (spooled operations stay in the file)."""
        self.last_try = time.time()
        n = len(self.buffer)
        while self.buffer:
            try:
                self.send(self.buffer[0])
            except Exception as e:
                if not is_outage(e):
                    raise
                self.wait = min(2 * self.wait, 8 * self.retry_every)
                return False
            self.buffer.popleft()
        if self.down_since is not None and not self.spooling:
            self.warn(f"MLflow at {self.uri} answers again after {time.time() - self.down_since:.0f} s: {n} "
                      "buffered operations sent, nothing lost")
            self.down_since, self.wait = None, self.retry_every
        return True

    def close(self) -> None:
        """At the end of the run: one last try for the buffer, else the spool file; a spool file is then
        replayed once (it stays, with a line saying how to replay it, if the store is still away)."""
        if self.buffer and not self.flush():
            self._spill()
        if self.spooling:
            try:
                replay(self.spool, self.uri)
                self.warn(f"MLflow at {self.uri} answers again: {self.spool} replayed into run {self.run_id}")
            except Exception as e:
                self.warn(f"warning: MLflow at {self.uri} still unreachable ({_first_line(e)}); run {self.run_id}'s "
                          f"remaining log is in {self.spool}: send it with `dfgan tracking replay {self.spool}`")

    def _spill(self) -> None:
        ops, self.buffer = list(self.buffer), deque()
        self._append_spool(ops)
        self.spooling = True
        self.warn(f"warning: MLflow at {self.uri} unreachable for {time.time() - (self.down_since or time.time()):.0f}"
                  f" s: training goes on, run {self.run_id}'s log goes to {self.spool} (replayed at the end of the "
                  f"run if the store is back, else with `dfgan tracking replay {self.spool}`)")

    def _append_spool(self, ops: list[dict[str, Any]]) -> None:
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        new = not self.spool.exists()
        with open(self.spool, "a") as f:
            if new:
                f.write(json.dumps({"op": "run", "run_id": self.run_id, "uri": self.uri}) + "\n")
            for op in ops:
                f.write(json.dumps(op) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _steps_of(self, key: str) -> set[int]:
        if key not in self._logged:
            self._logged[key] = {int(m.step) for m in self.client.get_metric_history(self.run_id, key)}
        return self._logged[key]

    def send(self, op: dict[str, Any]) -> None:
        """One operation to the store, now (raises what the store raises). A Ctrl-C or SIGTERM that arrives
        meanwhile waits until the write is done (``dfgan.runtime.signals_held``): stopped half-way, a write to
        an SQLite store leaves it locked, and the run could not be marked KILLED."""
        with signals_held():
            self._send(op)

    def _send(self, op: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        kind, run = op["op"], self.run_id
        if kind == "metrics":
            values = op["values"]
            if self.dedupe:  # each (key, step) once: skip what the run already holds
                values = {k: v for k, v in values.items() if op["step"] not in self._steps_of(k)}
            if values:
                self.client.log_batch(run, metrics=[Metric(k, v, op["ts"], op["step"]) for k, v in values.items()])
            if self.dedupe:
                for k in values:
                    self._logged[k].add(op["step"])
        elif kind == "tags":
            self.client.log_batch(run, tags=[RunTag(k, v) for k, v in op["values"].items()])
        elif kind == "params":
            self.client.log_batch(run, params=[Param(k, v) for k, v in op["values"].items()])
        elif kind == "artifact":
            if Path(op["path"]).exists():
                self.client.log_artifact(run, op["path"], op["artifact_path"])
        elif kind == "text":
            self.client.log_text(run, op["text"], op["name"])
        elif kind == "end":
            self.client.set_terminated(run, op["status"])
        elif kind != "run":
            raise ValueError(f"unknown logging operation {kind!r}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else type(e).__name__)


def replay(path: str | Path, uri: str | None = None) -> dict[str, int]:
    """Send a spool file written by ``RunWriter`` to its run (at ``uri``, default the one it records); metric
    points the run holds already are skipped. Renamed to ``<file>.replayed`` when all of it was sent.
    Returns the number of operations sent, by kind."""
    path = Path(path)
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except ValueError as e:
        raise TrackingError(f"{path} is not a dfgan MLflow spool file (not JSON lines: {e})") from None
    if not lines or lines[0].get("op") != "run":
        raise TrackingError(f"{path} is not a dfgan MLflow spool file (its first line names the run)")
    head = lines[0]
    writer = RunWriter(uri or head["uri"], head["run_id"], path, dedupe=True)
    counts: dict[str, int] = {}
    for n, op in enumerate(lines[1:], start=2):
        try:
            writer.send(op)
        except Exception as e:
            raise TrackingError(f"replay of {path} stopped at line {n} ({op['op']}): {_first_line(e)}; run it "
                               "again when the tracking store answers (points already sent are skipped)") from None
        counts[op["op"]] = counts.get(op["op"], 0) + 1
    path.rename(path.with_name(path.name + ".replayed"))
    return counts


def replay_leftover(path: str | Path, uri: str | None = None, warn: Callable[[str], None] = _warn) -> bool:
    """Replay a spool file an earlier session left (the store answers now); if that fails, move it aside to
    ``<file>.unsent-<time>`` and say so, so that the new session starts a file of its own."""
    path = Path(path)
    try:
        replay(path, uri)
        warn(f"sent {path}, the MLflow log an earlier session could not send")
        return True
    except Exception as e:
        aside = path.with_name(f"{path.name}.unsent-{int(time.time())}")
        path.rename(aside)
        warn(f"warning: could not send {path} ({_first_line(e)}); moved to {aside}: `dfgan tracking replay {aside}`")
        return False
