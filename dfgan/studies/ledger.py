"""Bookkeeping on an Optuna study's trials: what each cell's state is, who runs it, and what to retry.

Every trial that runs a cell carries user attributes: ``cell``, ``seed``, ``spec_hash``, ``grid``, ``outcome``
(``claiming`` / ``running`` while it runs; then ``trained``, ``reused``, ``duplicate`` or ``failed``),
``error`` (text of the exception), ``worker`` (host, pid, process start time), ``heartbeat`` (unix time,
refreshed while it trains) and ``mlflow_run_id``. A cell is identified by its spec hash: a hash with a
COMPLETE trial is never trained again.

Optuna keeps no error text and never retries a FAILED trial: failed cells are re-queued with
``enqueue_trial`` at the start of the next invocation. A worker that died without telling Optuna leaves its
trial RUNNING: it is declared failed when its process is gone (same host) or its heartbeat is stale.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_S = 30.0  # how often a training worker refreshes its trial's heartbeat
STALE_AFTER_S = 600.0  # a RUNNING trial whose heartbeat is older than this is taken as dead (any host)
ERROR_CHARS = 4000  # error text kept per trial (Optuna user attrs are JSON in the storage)


def worker_identity() -> dict:
    """Host, pid and process start time (the pair pid + start time is unique on a host)."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(),
            "pid_start": round(psutil.Process().create_time(), 2)}


def _alive_here(worker: dict) -> bool | None:
    """True/False for a worker on this host (is that process still there?); None for another host."""
    import psutil

    if not worker or worker.get("host") != socket.gethostname():
        return None
    try:
        proc = psutil.Process(int(worker["pid"]))
        return abs(proc.create_time() - float(worker.get("pid_start", 0))) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError):
        return False


def is_stale(t: FrozenTrial, now: float | None = None, stale_after: float = STALE_AFTER_S) -> bool:
    """A RUNNING trial whose worker is gone: dead process on this host, or heartbeat older than stale_after."""
    if t.state != TrialState.RUNNING:
        return False
    alive = _alive_here(t.user_attrs.get("worker", {}))
    if alive is not None:
        return not alive
    beat = t.user_attrs.get("heartbeat")
    if beat is None:
        start = t.datetime_start.timestamp() if t.datetime_start else None
        beat = start
    now = time.time() if now is None else now
    return beat is not None and now - float(beat) > stale_after


@dataclass
class CellState:
    """What the study's trials say about one spec hash."""

    done: list[FrozenTrial] = field(default_factory=list)  # COMPLETE (trained or reused)
    running: list[FrozenTrial] = field(default_factory=list)
    waiting: list[FrozenTrial] = field(default_factory=list)  # enqueued, not yet started
    failed: list[FrozenTrial] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.done:
            return "done"
        if self.running:
            return "running"
        if self.waiting:
            return "queued"
        if self.failed:
            return "failed"
        return "pending"

    def last_error(self) -> str | None:
        for t in reversed(self.failed):
            if t.user_attrs.get("error"):
                return t.user_attrs["error"]
        return None


def cell_states(study: optuna.Study) -> dict[str, CellState]:
    """Spec hash -> the trials that concern it."""
    out: dict[str, CellState] = defaultdict(CellState)
    for t in study.get_trials(deepcopy=False):
        h = t.user_attrs.get("spec_hash")
        if not h:
            continue
        if t.state == TrialState.COMPLETE and t.user_attrs.get("outcome") in ("trained", "reused"):
            out[h].done.append(t)
        elif t.state == TrialState.RUNNING and t.user_attrs.get("outcome") in ("claiming", "running"):
            out[h].running.append(t)
        elif t.state == TrialState.WAITING:
            out[h].waiting.append(t)
        elif t.state == TrialState.FAIL:
            out[h].failed.append(t)
    return out


def why_not_done(cells: list[tuple[str, str]], states: dict[str, CellState]) -> list[str]:
    """For each (label, spec hash) not done: the label and who has the cell or what happens to it next."""
    out = []
    for key, h in cells:
        st = states.get(h)
        if st is not None and st.status == "done":
            continue
        if st is not None and st.running and not all(is_stale(t) for t in st.running):
            w = st.running[0].user_attrs.get("worker", {})
            why = f"running in another worker ({w.get('host')}:{w.get('pid')}); run `dfgan ablate` again after it"
        elif st is not None and st.running:
            why = "its worker is gone; retried by the next invocation"
        elif st is not None and st.status == "failed":
            why = "failed; retried by the next invocation"
        else:
            why = "not started; run `dfgan ablate` again"
        out.append(f"{key} ({why})")
    return out


def fail_stale_trials(study: optuna.Study, stale_after: float = STALE_AFTER_S) -> list[FrozenTrial]:
    """Mark RUNNING trials of dead workers FAILED (with an error saying so); returns them."""
    stale = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
             if is_stale(t, stale_after=stale_after)]
    for t in stale:
        w = t.user_attrs.get("worker", {})
        msg = (f"worker {w.get('host')}:{w.get('pid')} stopped without finishing this cell "
               "(process gone or heartbeat stale); re-queued")
        try:
            study._storage.set_trial_user_attr(t._trial_id, "error", msg)
            study._storage.set_trial_user_attr(t._trial_id, "outcome", "failed")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except RuntimeError:  # finished meanwhile (another worker got there first)
            pass
    return stale


def set_error(trial: optuna.Trial, error: BaseException | str) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = text[:ERROR_CHARS]
    trial.set_user_attr("error", text)
    return text


class Heartbeat:
    """Refreshes a trial's ``heartbeat`` user attribute from a daemon thread while the cell trains."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, every: float = HEARTBEAT_S):
        self._storage, self._trial_id, self._every = study._storage, trial._trial_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dfgan-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._storage.set_trial_user_attr(self._trial_id, "heartbeat", time.time())
            except Exception:  # the trial finished, or the storage hiccuped: the next beat retries
                pass

    def __enter__(self) -> Heartbeat:
        self._storage.set_trial_user_attr(self._trial_id, "heartbeat", time.time())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
