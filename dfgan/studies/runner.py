"""Running a study: every cell (row x seed) once, shared by any number of workers through one Optuna storage.

The Optuna study (named after the study) uses a grid sampler over ``variant x seed``. The parameters are named
after the grid, a fingerprint of the cells' spec hashes (``variant@<grid>``, ``seed@<grid>``), so changing an
override, a seed list or a variant file starts a new grid in the same study instead of being mistaken for the
finished one (Optuna's storage also refuses a changed choice list under one parameter name). We drive it with
ask/tell:

- a cell whose spec hash already has a COMPLETE trial is never trained again (the trial is told COMPLETE with
  the earlier value, outcome ``reused``);
- a cell claimed by another live worker is skipped (told PRUNED, outcome ``duplicate``): two workers never
  train the same cell, even when Optuna's grid hands both the same point;
- a failing cell keeps its error text and is re-queued (``enqueue_trial``) by the next invocation; it then
  resumes from its checkpoint if it had one;
- ``max_cells`` ends an invocation early (tests use it to simulate an interruption).
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from dfgan.experiment import check_data, check_spec
from dfgan.metrics.names import choose_metric
from dfgan.run_identity import run_folder, run_hash
from dfgan.runs import check_name, checkpoint_step
from dfgan.spec import Spec, SpecError
from dfgan.studies.definition import (
    Cell,
    StudyDefinition,
    base_spec,
    cell_spec,
    grid_hash,
    resolve_seeds,
)
from dfgan.studies.grid_sampler import grid_param_names, grid_sampler_class
from dfgan.studies.ledger import (
    Heartbeat,
    cell_states,
    fail_stale_trials,
    is_stale,
    set_error,
    why_not_done,
    worker_identity,
)
from dfgan.studies.mlflow_glue import InvocationRun, cell_metrics, cell_tags, mark_runs
from dfgan.studies.pool import claim_from_pool, find_in_pool, join_pool
from dfgan.studies.storage import default_storage_url, describe_storage, open_storage
from dfgan.tracking import Tracker, resolve_uri
from dfgan.train import loop

KIND_ATTR = "dfgan_kind"  # Optuna study user attr: 'grid' (dfgan ablate) or 'search' (dfgan search)
TRACEBACK_LINES = 12  # traceback tail kept with a failed cell's error


@dataclass
class PlannedCell:
    cell: Cell
    seed: int
    spec: Spec

    @property
    def hash(self) -> str:
        return run_hash(self.spec)

    @property
    def key(self) -> str:
        return f"{self.cell.label} seed={self.seed}"


@dataclass
class StudyPlan:
    """What one invocation will run: the cells with their resolved specs, on one footing."""

    name: str
    definition: StudyDefinition
    overrides: list[str]
    seeds: list[int]
    entries: list[PlannedCell]
    grid: str
    base_out_dir: str
    warnings: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return list(dict.fromkeys(e.cell.label for e in self.entries))

    def entry(self, label: str, seed: int) -> PlannedCell:
        for e in self.entries:
            if e.cell.label == label and e.seed == seed:
                return e
        raise KeyError((label, seed))


@dataclass
class StudyOutcome:
    study: str
    storage: str
    tracking_uri: str
    trained: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    parent_run_id: str | None = None
    seconds: float = 0.0


def plan_study(definition: StudyDefinition, *, name: str | None = None, seeds: int | list[int] | None = None,
               overrides: list[str] | tuple[str, ...] = ()) -> StudyPlan:
    """Resolve and validate every cell's spec before anything runs (errors name the cell and the field)."""
    name = check_name(name or definition.name, "study name")  # names a folder under train.out_dir
    common = [*definition.overrides, *overrides]
    cells = definition.cells()
    base = base_spec(cells[0].variant, common)
    seed_list = resolve_seeds(seeds if seeds is not None else definition.seeds, base.train.seed)
    entries = [PlannedCell(c, s, cell_spec(c, s, name, common, base.train.out_dir, folder=definition.cell_pool))
               for s in seed_list for c in cells]
    for e in entries:  # every cell checked against the registries and its data before any cell runs
        try:
            check_spec(e.spec)
            check_data(e.spec)
        except SpecError as err:
            raise SpecError(f"study '{name}', cell '{e.cell.label}' (seed {e.seed}): {err}") from None
    warnings = []
    seen: dict[str, str] = {}
    for e in entries:
        if e.hash in seen:
            warnings.append(f"cells '{seen[e.hash]}' and '{e.key}' resolve to the same spec ({e.hash}): "
                            "trained once, the second reuses the first's result")
        seen.setdefault(e.hash, e.key)
    grid = grid_hash([(e.cell.label, e.seed, e.hash) for e in entries])
    return StudyPlan(name, definition, common, seed_list, entries, grid, base.train.out_dir, warnings)


def load_or_create_study(name: str, storage, *, kind: str, sampler, direction: str, pruner=None):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, direction=direction,
                                pruner=pruner, load_if_exists=True)
    existing = study.user_attrs.get(KIND_ATTR)
    if existing is None:
        study.set_user_attr(KIND_ATTR, kind)
    elif existing != kind:
        raise SpecError(f"Optuna study '{name}' in this storage is a '{existing}' study, not a '{kind}' one; "
                        "pick another --study name or --storage")
    return study


class IncompleteCellError(RuntimeError):
    """A cell's training returned without the metric the study records for it."""


def required_metric(spec: Spec, preferred: str | None) -> str | None:
    """The metric a finished cell must have logged: the study's, when the cell evaluates it, else the cell's
    first evaluation metric; None when the cell evaluates nothing (its objective is then a fallback)."""
    metrics = spec.end_metrics()
    if preferred and preferred in metrics:
        return preferred
    return metrics[0] if metrics else None


def objective_value(metrics: dict[str, float], preferred: str | None) -> tuple[float, str]:
    """The value Optuna records for a finished cell (grid studies do not optimise it: it is for dashboards).
    A non-finite value would make Optuna mark the trial failed; it is recorded as 0 with a note instead."""
    name, _ = choose_metric(list(metrics), preferred)
    if name is None:
        return 0.0, "none"
    value = float(metrics[name])
    if not math.isfinite(value):
        return 0.0, f"{name} (was {value}; 0 recorded)"
    return value, name


def echo_line(text: str) -> None:
    """Progress lines are flushed at once: a study's log is often a file or a pipe."""
    print(text, flush=True)


class _Progress:
    """One line per cell start and finish, with timing."""

    def __init__(self, study: str, total: int, echo: Callable[[str], None]):
        self.study, self.total, self.echo = study, total, echo

    def __call__(self, what: str, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.echo(f"[{self.study} {stamp}] {what:<8s} {text}")


def study_status(plan: StudyPlan, storage_url: str | None = None) -> list[dict]:
    """Per cell: label, seed, spec hash, status (pending/queued/running/done/failed), ``steps`` (the cell's
    train.steps), ``checkpoint_step`` (where an unfinished cell resumes: its folder's checkpoint, else None),
    ``attempts`` (its failed or interrupted trials) and ``error`` (the last one's text; None once done)."""
    import optuna

    storage_url = storage_url or default_storage_url(plan.base_out_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=plan.name, storage=storage)
        states = cell_states(study)
    except KeyError:
        states = {}
    rows = []
    pool = plan.definition.cell_pool
    for e in plan.entries:
        st = states.get(e.hash)
        status = st.status if st else "pending"
        match = find_in_pool(storage, pool, plan.name, e.hash) if pool and status == "pending" else None
        if match is not None:
            status = f"{match.status} in study '{match.study}' (pool {pool}): reused when this study runs"
        if status == "running" and all(is_stale(t) for t in st.running):
            status = "stale (worker gone: retried by the next invocation)"
        done = status.startswith("done")
        rows.append({"cell": e.cell.label, "seed": e.seed, "spec_hash": e.hash, "status": status,
                     "steps": e.spec.train.steps, "attempts": len(st.failed) if st else 0,
                     "checkpoint_step": None if done else checkpoint_step(run_folder(e.spec)),
                     "error": st.last_error() if st and not done else None})
    return rows


def run_study(plan: StudyPlan, *, storage_url: str | None = None, tracking_uri: str | None = None,
              max_cells: int | None = None, progress: bool = False,
              echo: Callable[[str], None] = echo_line) -> StudyOutcome:
    """Run the plan's missing cells (see the module docstring); returns what this invocation did."""
    from optuna.trial import TrialState

    t0 = time.time()
    storage_url = storage_url or default_storage_url(plan.base_out_dir)
    uri = resolve_uri(tracking_uri, plan.base_out_dir)
    storage_label = describe_storage(storage_url)
    out = StudyOutcome(plan.name, storage_label, uri)
    say = _Progress(plan.name, len(plan.entries), echo)
    for w in plan.warnings:
        say("warning", w)

    p_variant, p_seed = grid_param_names(plan.grid)
    space = {p_variant: plan.labels, p_seed: plan.seeds}
    sampler = grid_sampler_class()(space, order=[p_seed, p_variant])
    study = load_or_create_study(plan.name, open_storage(storage_url), kind="grid", sampler=sampler,
                                 direction=plan.definition.direction)
    study.set_user_attr(f"grid.{plan.grid}", {"overrides": plan.overrides, "seeds": plan.seeds,
                                              "cells": plan.labels})
    join_pool(study, plan.definition.cell_pool)

    # 1. trials of workers that died: failed, and their MLflow runs marked KILLED
    for t in fail_stale_trials(study):
        say("stale", f"trial #{t.number} ({t.user_attrs.get('cell')} seed={t.user_attrs.get('seed')}): worker "
                     "gone, marked failed")
        try:
            mark_runs(uri, plan.name, t.number, "KILLED", {"stopped": "worker process gone; the cell is retried"},
                      only_status="RUNNING", parents=True)
        except Exception:  # MLflow unreachable: the run stays RUNNING, the cell is retried all the same
            pass

    # 2. failed cells of this grid go back into the queue
    states = cell_states(study)
    for e in plan.entries:
        st = states.get(e.hash)
        if st is not None and st.status == "failed":
            last = st.failed[-1]
            study.enqueue_trial({p_variant: e.cell.label, p_seed: e.seed},
                                user_attrs={"spec_hash": e.hash, "retry_of": last.number})
            out.requeued.append(e.key)
            say("requeue", f"{e.key} (trial #{last.number} failed: {(st.last_error() or '?')[:160]})")

    parent = InvocationRun(uri, plan.name, plan.base_out_dir, {
        "study_kind": plan.definition.kind, "grid": plan.grid, "overrides": " ".join(plan.overrides),
        "seeds": ",".join(map(str, plan.seeds)), "cells": ",".join(plan.labels),
        "optuna_storage": storage_label})
    attempted: set[str] = set()
    useless_asks = 0
    status = "FINISHED"
    try:
        while max_cells is None or len(out.trained) + len(out.failed) < max_cells:
            states = cell_states(study)
            todo = [e for e in plan.entries if e.hash not in attempted
                    and (e.hash not in states or states[e.hash].status in ("pending", "failed", "queued"))]
            if not todo or useless_asks > len(plan.entries) + 4:
                break
            trial = study.ask()
            fixed = study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params") or {}
            if fixed and p_variant not in fixed:  # queued by an invocation with another grid
                trial.set_user_attr("outcome", "foreign")
                study.tell(trial, state=TrialState.PRUNED)
                useless_asks += 1
                continue
            e = plan.entry(trial.suggest_categorical(p_variant, plan.labels),
                           trial.suggest_categorical(p_seed, plan.seeds))
            for k, v in {"cell": e.cell.label, "seed": e.seed, "spec_hash": e.hash, "grid": plan.grid,
                         "worker": worker_identity(), "outcome": "claiming"}.items():
                trial.set_user_attr(k, v)

            # claim: yield to a finished cell, a committed runner, or an earlier claimant
            st = cell_states(study).get(e.hash)
            done = [t for t in (st.done if st else []) if t.number != trial.number]
            rivals = [t for t in (st.running if st else []) if t.number != trial.number and not is_stale(t)
                      and (t.user_attrs.get("outcome") == "running" or t.number < trial.number)]
            if done:
                d = done[0]
                trial.set_user_attr("outcome", "reused")
                trial.set_user_attr("reused_from", d.number)
                trial.set_user_attr("mlflow_run_id", d.user_attrs.get("mlflow_run_id"))
                study.tell(trial, d.value)
                out.reused.append(e.key)
                useless_asks += 1
                continue
            shared = None if rivals or e.hash in attempted or not plan.definition.cell_pool else claim_from_pool(
                study, trial, plan.definition.cell_pool, spec_hash=e.hash, label=e.cell.label, seed=e.seed,
                overrides=plan.overrides, kind=plan.definition.kind, tracking_uri=uri)
            if shared:  # finished by another study of the pool (reused), or being trained there (skipped)
                (out.reused if shared == "reused" else out.skipped).append(e.key)
                useless_asks += 1
                continue
            if rivals or e.hash in attempted:
                trial.set_user_attr("outcome", "duplicate")
                if rivals:
                    trial.set_user_attr("duplicate_of", rivals[0].number)
                study.tell(trial, state=TrialState.PRUNED)
                out.skipped.append(e.key)
                useless_asks += 1
                continue

            trial.set_user_attr("outcome", "running")
            attempted.add(e.hash)
            useless_asks = 0
            parent_id = parent.start()
            out.parent_run_id = parent_id
            n_done = sum(1 for x in plan.entries if states.get(x.hash) and states[x.hash].status == "done")
            say("start", f"{e.key}  [{n_done}/{len(plan.entries)} done]  trial #{trial.number}, "
                         f"spec {e.hash}")
            t_cell = time.time()
            try:
                tags = cell_tags(study=plan.name, cell=e.cell, seed=e.seed, trial_number=trial.number,
                                 grid=plan.grid, overrides=plan.overrides, kind=plan.definition.kind,
                                 storage=storage_label)
                with Heartbeat(study, trial):
                    tracker = Tracker.for_spec(e.spec, enabled=True, uri=uri, parent_run_id=parent_id,
                                               extra_tags=tags)
                    res = loop.train(e.spec, resume=True, progress=progress, tracker=tracker)
                metrics = cell_metrics(res, uri)
                need = required_metric(e.spec, plan.definition.metric)
                if need and need not in metrics:  # not complete: never a done cell with a fallback objective
                    raise IncompleteCellError(f"the run ended without its objective metric '{need}' (logged: "
                                              f"{', '.join(sorted(metrics)) or 'nothing'}); re-queued")
                value, value_name = objective_value(metrics, need or plan.definition.metric)
                for k, v in {"mlflow_run_id": res.run_id, "seconds": round(time.time() - t_cell, 2),
                             "value_metric": value_name, "outcome": "trained"}.items():
                    trial.set_user_attr(k, v)
                study.tell(trial, value)
                out.trained.append(e.key)
                parts = ", ".join(f"{k[len(value_name) + 1:]} {v:.2f}" for k, v in sorted(metrics.items())
                                  if k.startswith(value_name + "."))  # e.g. attr_acc per attribute
                say("done", f"{e.key}  {time.time() - t_cell:.1f}s  {value_name}={value:.4g}"
                    + (f" ({parts})" if parts else ""))
            except KeyboardInterrupt:
                set_error(trial, "interrupted (KeyboardInterrupt); re-queued by the next invocation")
                trial.set_user_attr("outcome", "failed")
                study.tell(trial, state=TrialState.FAIL)
                raise
            except Exception as err:  # the cell failed: keep why, go on with the others
                tb = "".join(traceback.format_exception(err)).splitlines()[-TRACEBACK_LINES:]
                text = set_error(trial, f"{type(err).__name__}: {err}\n" + "\n".join(tb))
                trial.set_user_attr("outcome", "failed")
                study.tell(trial, state=TrialState.FAIL)
                out.failed.append(e.key)
                say("FAILED", f"{e.key}  after {time.time() - t_cell:.1f}s: {text.splitlines()[0][:300]}")
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except Exception:
        status = "FAILED"
        raise
    finally:
        states = cell_states(study)
        out.remaining = [e.key for e in plan.entries if not (e.hash in states and states[e.hash].status == "done")]
        out.seconds = time.time() - t0
        parent.set_tags({"cells_trained": len(out.trained), "cells_failed": len(out.failed),
                         "cells_remaining": len(out.remaining), "seconds": round(out.seconds, 1)})
        parent.end(status)
    say("summary", f"trained {len(out.trained)}, failed {len(out.failed)}, reused {len(out.reused)}, "
                   f"remaining {len(out.remaining)} of {len(plan.entries)} cells; {out.seconds:.0f}s; "
                   f"storage {storage_label}; MLflow {uri}")
    if out.remaining:
        say("NOT DONE", f"this invocation ends with {len(out.remaining)} of {len(plan.entries)} cells not done: "
                        + "; ".join(why_not_done([(e.key, e.hash) for e in plan.entries], states)))
    return out

