"""Putting a study's finished cells back from its committed export, onto a fresh Optuna storage and MLflow store.

A long study keeps its Optuna storage and MLflow store outside the work tree (``scripts/study_workers.sh``); a
machine that is not kept loses them, and with them every finished cell, although ``dfgan report`` committed
each cell's record under ``reports/<study>/``. ``dfgan restore`` reads that record back:

- ``cells.jsonl`` (written by ``dfgan report``): one JSON object per finished cell run: its label, seed, spec
  hash, tags, params, final metrics and the full history of every metric logged at most ``HISTORY_POINTS``
  times (the evaluations; the losses, logged every few steps, keep their last value);
- ``runs.csv`` (what older reports wrote): the final metrics and tags only; a cell restored from it has one
  point per metric, at its last step, and its periodic evaluations are gone.

Each exported cell must match a cell of the study's plan (same label and seed) with the same spec hash, or
nothing is written. A matched cell that the storage does not already have as done becomes:

- an MLflow run in the study's experiment, FINISHED, with the exported tags, params (from the plan's spec where
  the export has none), metrics and start/end times, plus ``restored_from`` (the file and the commit that holds
  it), ``restored_run_id`` (the run it copies) and ``restored_history`` (whether the periodic evaluations came
  back or the final values only); the last sample grid, when the export folder has
  ``figures/samples_<label>_seed<seed>.png``, as the artifact ``samples/step_<steps, 7 digits>.png``;
- an Optuna trial, COMPLETE with the study metric's value and the user attributes the runner writes
  (``outcome`` ``trained``), so that no runner trains it again.

Then the cells left are queued in plan order (seed-major), so that a runner of any commit hands them out in that
order (runners before 4ba0d5e give trial k the grid point k, which restored trials would otherwise shift), and a
cell killed half-way goes before new ones: see ``queue_in_plan_order``. Run it again on a kept machine, with the
workers stopped, before starting them: nothing is restored twice, and the queue is put back in order.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from dfgan.spec import SpecError
from dfgan.studies.grid_sampler import grid_param_names
from dfgan.studies.ledger import cell_states, is_stale
from dfgan.studies.mlflow_glue import InvocationRun
from dfgan.studies.pool import join_pool
from dfgan.studies.runner import load_or_create_study, objective_value, required_metric
from dfgan.studies.storage import default_storage_url, describe_storage, open_storage
from dfgan.tracking import resolve_uri, sqlite_file

CELLS_FILE = "cells.jsonl"
HISTORY_POINTS = 64  # a metric logged at most this often keeps its whole history in the export
DROPPED_TAGS = ("mlflow.parentRunId",)  # the parent invocation is not restored: the cell nests under the restore's
RESTORED_OUTCOME = "trained"  # what the runner's ledger counts as done (dfgan.studies.ledger.cell_states)
RESTORED_HISTORY_TAG = "restored_history"  # on a restored run: what of its metric histories came back
HISTORY_KEPT, HISTORY_LOST = "periodic evaluations", "final values only"


@dataclass
class ExportedCell:
    """One finished cell run as ``dfgan report`` exports it."""

    label: str
    seed: int
    spec_hash: str
    run_id: str
    status: str = "FINISHED"
    start_ms: int | None = None
    end_ms: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # last value of each metric
    history: dict[str, list[list[float]]] = field(default_factory=dict)  # metric -> [[step, value], ...]

    @property
    def key(self) -> str:
        return f"{self.label} seed={self.seed}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True)


@dataclass
class RestoreOutcome:
    restored: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # exported runs that were not FINISHED
    queued: list[str] = field(default_factory=list)
    superseded: int = 0  # earlier queue entries replaced by the plan-order queue
    history_lost: list[str] = field(default_factory=list)  # restored with final values only


# ---- the export's two formats -------------------------------------------------------------------------------------
def _ms(value: Any) -> int | None:
    """MLflow's start/end time, as search_runs gives it (a datetime or its text) or as milliseconds."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, int | float):
        return int(value)
    if hasattr(value, "timestamp"):
        return int(value.timestamp() * 1000)
    return int(datetime.fromisoformat(str(value)).timestamp() * 1000)


def _number(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def cell_from_row(row: dict[str, Any], history: dict[str, list[list[float]]] | None = None) -> ExportedCell:
    """An exported cell from one row of a report's cell table (``run_id``, ``variant``, ``seed``, ``status``,
    ``start_time``, ``end_time``, ``metrics.*``, ``tags.*``, ``params.*``), as runs.csv or MLflow has it."""
    def part(prefix: str) -> dict[str, Any]:
        return {k[len(prefix):]: v for k, v in row.items() if k.startswith(prefix)}

    metrics = {k: v for k, v in ((k, _number(v)) for k, v in part("metrics.").items()) if v is not None}
    texts = {k: str(v) for k, v in part("tags.").items()
             if v is not None and str(v) not in ("", "nan", "None")}
    params = {k: str(v) for k, v in part("params.").items() if v is not None and str(v) != "nan"}
    missing = [k for k in ("run_id", "variant", "seed") if row.get(k) in (None, "")] + \
        ([] if texts.get("spec_hash") else ["tags.spec_hash"])
    if missing:
        raise SpecError(f"exported cell run {row.get('run_id', '?')}: no {', '.join(missing)}")
    return ExportedCell(label=str(row["variant"]), seed=int(float(row["seed"])), spec_hash=texts["spec_hash"],
                        run_id=str(row["run_id"]), status=str(row.get("status") or "FINISHED"),
                        start_ms=_ms(row.get("start_time")), end_ms=_ms(row.get("end_time")), tags=texts,
                        params=params, metrics=metrics, history=history or {})


def read_export(path: str | Path) -> list[ExportedCell]:
    """The cells of ``cells.jsonl`` or of an older report's ``runs.csv``."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"no export at {path}: give reports/<study>/{CELLS_FILE} (or an older report's runs.csv)")
    if path.suffix == ".jsonl":
        out = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    out.append(ExportedCell(**json.loads(line)))
                except (json.JSONDecodeError, TypeError) as e:
                    raise SpecError(f"{path}:{i}: not an exported cell ({e})") from None
        return out
    csv.field_size_limit(sys.maxsize)  # the protocol tags are long JSON
    with path.open(newline="") as f:
        return [cell_from_row(r) for r in csv.DictReader(f)]


# ---- restoring ----------------------------------------------------------------------------------------------------
def match_plan(plan, cells: list[ExportedCell]) -> list[tuple[Any, ExportedCell]]:
    """(planned cell, exported cell) for every FINISHED exported cell; any label/seed the plan lacks, or a spec
    hash that differs from the plan's, fails the whole restore before anything is written."""
    problems, pairs = [], []
    for c in cells:
        if c.status != "FINISHED":
            continue
        try:
            e = plan.entry(c.label, c.seed)
        except KeyError:
            problems.append(f"{c.key}: not a cell of study '{plan.name}' (cells: {', '.join(plan.labels)}; seeds "
                            f"{plan.seeds})")
            continue
        if e.hash != c.spec_hash:
            problems.append(f"{c.key}: exported spec hash {c.spec_hash}, the study's is {e.hash} (a variant, the "
                            "study's overrides or the spec schema changed since the export)")
            continue
        pairs.append((e, c))
    if problems:
        raise SpecError("the export does not match the study; nothing restored:\n  " + "\n  ".join(problems))
    return pairs


def _final_step(planned, c: ExportedCell) -> int:
    return int(_number(c.params.get("train.steps", "")) or planned.spec.train.steps)


def _log_run(client, experiment_id: str, planned, c: ExportedCell, parent_id: str, source: str,
             samples: Path | None) -> str:
    from mlflow.entities import Metric, Param

    tags = {k: v for k, v in c.tags.items() if k not in DROPPED_TAGS}
    tags.update({"restored_from": source, "restored_run_id": c.run_id, "mlflow.parentRunId": parent_id,
                 "mlflow.runName": c.tags.get("mlflow.runName", c.label),
                 RESTORED_HISTORY_TAG: HISTORY_KEPT if c.history else HISTORY_LOST})
    run = client.create_run(experiment_id, start_time=c.start_ms, tags=tags)
    rid = run.info.run_id
    params = c.params or {k: str(v) for k, v in planned.spec.flat().items()}
    step, stamp = _final_step(planned, c), c.end_ms or int(time.time() * 1000)
    points = [Metric(k, float(v), stamp, int(s)) for k, hist in c.history.items() for s, v in hist]
    points += [Metric(k, float(v), stamp, step) for k, v in c.metrics.items() if k not in c.history]
    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, max(len(items), len(points), 1), 100):  # MLflow's log_batch limits
        client.log_batch(rid, metrics=points[i:i + 100] if i < len(points) else [],
                         params=items[i:i + 100] if i < len(items) else [], tags=[])
    client.log_text(rid, planned.spec.to_yaml(), "spec.yaml")
    grid = samples / f"samples_{c.label}_seed{c.seed}.png" if samples else None
    if grid is not None and grid.is_file():
        with tempfile.TemporaryDirectory() as tmp:  # the name the training loop gives a sample grid
            dst = Path(tmp) / f"step_{step:07d}.png"
            dst.write_bytes(grid.read_bytes())
            client.log_artifact(rid, str(dst), "samples")
    client.set_terminated(rid, "FINISHED", end_time=c.end_ms)
    return rid


def _add_trial(study, plan, planned, c: ExportedCell, run_id: str, source: str) -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution


    p_variant, p_seed = grid_param_names(plan.grid)
    need = required_metric(planned.spec, plan.definition.metric)
    if need and need not in c.metrics:
        raise SpecError(f"exported cell {c.key} has no value of the study metric '{need}'")
    value, value_name = objective_value(c.metrics, need or plan.definition.metric)
    attrs = {"cell": c.label, "seed": c.seed, "spec_hash": c.spec_hash, "grid": plan.grid,
             "outcome": RESTORED_OUTCOME, "value_metric": value_name, "mlflow_run_id": run_id,
             "restored_from": source, "restored_run_id": c.run_id, "restored_trial": c.tags.get("trial")}
    study.add_trial(optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE, value=value,
        params={p_variant: c.label, p_seed: c.seed},
        distributions={p_variant: CategoricalDistribution(plan.labels), p_seed: CategoricalDistribution(plan.seeds)},
        user_attrs=attrs))


def queue_in_plan_order(study, plan) -> tuple[list[str], int]:
    """Queue, in plan order, every cell that is neither done nor being trained by a live worker; returns their
    keys and how many earlier queue entries were superseded.

    Runners put a re-queued cell (a killed one, with its checkpoint) behind every cell already waiting, so a
    study stopped part-way would train new cells before finishing its half-trained ones. With no live worker
    (no trial RUNNING whose worker is alive), the queue is therefore rebuilt: the waiting trials of this grid are
    told PRUNED (outcome ``superseded``, which no ledger counts) and every cell left is enqueued in plan order.
    With a live worker, popping and pruning could race, so only cells that have no queue entry are appended."""
    from optuna.trial import TrialState


    p_variant, p_seed = grid_param_names(plan.grid)
    trials = study.get_trials(deepcopy=False)
    live = any(t.state == TrialState.RUNNING and not is_stale(t) for t in trials)
    hashes = {e.hash for e in plan.entries}
    superseded = 0
    if not live:
        for t in trials:
            if t.state == TrialState.WAITING and t.user_attrs.get("spec_hash") in hashes:
                study._storage.set_trial_user_attr(t._trial_id, "outcome", "superseded")
                study._storage.set_trial_state_values(t._trial_id, TrialState.PRUNED)
                superseded += 1
    states = cell_states(study)
    out = []
    for e in plan.entries:
        st = states.get(e.hash)
        if st is not None and (st.done or st.waiting or any(not is_stale(t) for t in st.running)):
            continue
        study.enqueue_trial({p_variant: e.cell.label, p_seed: e.seed}, user_attrs={"spec_hash": e.hash})
        out.append(e.key)
    return out, superseded


def _existing_states(name: str, storage_url: str) -> dict:
    """The cell states of study ``name`` if the storage has it; {} (and nothing created) if not."""
    import optuna


    path = sqlite_file(storage_url)
    if path is not None and not path.exists():
        return {}
    try:
        return cell_states(optuna.load_study(study_name=name, storage=open_storage(storage_url)))
    except KeyError:
        return {}


def restore_study(plan, cells: list[ExportedCell], *, source: str, storage_url: str | None = None,
                  tracking_uri: str | None = None, samples: Path | None = None, queue: bool = True,
                  dry_run: bool = False) -> RestoreOutcome:
    """Restore ``cells`` (read from ``source``) into the study of ``plan`` (see the module docstring)."""

    out = RestoreOutcome(skipped=[c.key for c in cells if c.status != "FINISHED"])
    pairs = match_plan(plan, cells)
    storage_url = storage_url or default_storage_url(plan.base_out_dir)
    uri = resolve_uri(tracking_uri, plan.base_out_dir)
    if dry_run:
        states = _existing_states(plan.name, storage_url)
    else:
        study = load_or_create_study(plan.name, open_storage(storage_url), kind="grid", sampler=None,
                                     direction=plan.definition.direction)
        states = cell_states(study)
    todo = []
    for planned, c in pairs:
        st = states.get(planned.hash)
        (out.already_done if st is not None and st.status == "done" else todo).append((planned, c))
    out.already_done = [c.key for _, c in out.already_done]
    if dry_run:
        out.restored = [c.key for _, c in todo]
        out.history_lost = [c.key for _, c in todo if not c.history]
        return out
    study.set_user_attr(f"grid.{plan.grid}", {"overrides": plan.overrides, "seeds": plan.seeds,
                                              "cells": plan.labels})
    join_pool(study, plan.definition.cell_pool)
    if todo:
        parent = InvocationRun(uri, plan.name, plan.base_out_dir, {
            "study_kind": plan.definition.kind, "grid": plan.grid, "restored_from": source,
            "cells": ",".join(plan.labels), "optuna_storage": describe_storage(storage_url)})
        parent_id = parent.start()
        client = parent.client
        exp_id = client.get_experiment_by_name(plan.name).experiment_id
        try:
            for planned, c in todo:
                run_id = _log_run(client, exp_id, planned, c, parent_id, source, samples)
                _add_trial(study, plan, planned, c, run_id, source)
                out.restored.append(c.key)
                if not c.history:
                    out.history_lost.append(c.key)
        finally:
            parent.set_tags({"cells_restored": len(out.restored)})
            parent.end("FINISHED" if len(out.restored) == len(todo) else "FAILED")
    if queue:
        out.queued, out.superseded = queue_in_plan_order(study, plan)
    return out
