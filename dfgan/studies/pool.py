"""Cell pools: studies that share their cells, so that a cell two studies have in common is trained once.

A study file may name a ``cell_pool``. Its Optuna study then carries the pool's name (user attr
``dfgan_cell_pool``), its cells' run folders are ``<train.out_dir>/studies/<pool>/<label>-<spec hash>``, and
before a worker trains a cell it looks in every other study of the pool in the same storage:

- a COMPLETE trial there with the same spec hash (the hash covers everything that defines the experiment, not
  where it is stored or logged) is *reused*: this study's trial is told COMPLETE with that trial's value and
  points to its MLflow run (``reused_from_study``, ``reused_from``, ``mlflow_run_id``); the MLflow run gets the
  tag ``shared_with.<study>`` (JSON: the label, seed, common overrides and kind the run stands for in this study),
  which ``dfgan.reports.collect`` follows, so the run is one run folder and one MLflow run read by both reports;
- a live trial there on the same hash (another worker is training it) makes this one yield (``duplicate``, as
  within one study); the cell is reused by this study's next invocation.

Two claimants in different studies are ordered by their trials' start time (then study name), so exactly one
trains. Nothing is shared without a pool, nor across storages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from dfgan.studies.ledger import cell_states, is_stale

POOL_ATTR = "dfgan_cell_pool"  # Optuna study user attr: the pool's name
SHARED_TAG = "shared_with"  # MLflow tag prefix on a reused cell run: shared_with.<study> = JSON


@dataclass
class PoolMatch:
    study: str  # the other study of the pool
    trial: FrozenTrial
    status: str  # "done" or "running"


def join_pool(study: optuna.Study, pool: str | None) -> None:
    if pool and study.user_attrs.get(POOL_ATTR) != pool:
        study.set_user_attr(POOL_ATTR, pool)


def pool_studies(storage, pool: str, exclude: str) -> list[optuna.Study]:
    """The other studies of ``pool`` in ``storage``."""
    return [optuna.load_study(study_name=s.study_name, storage=storage) for s in storage.get_all_studies()
            if s.study_name != exclude and s.user_attrs.get(POOL_ATTR) == pool]


def _order(t: FrozenTrial, study: str) -> tuple[datetime, str]:
    return t.datetime_start or datetime.max, study


def find_in_pool(storage, pool: str, study: str, spec_hash: str, claimant: FrozenTrial | None = None
                 ) -> PoolMatch | None:
    """A finished trial of ``spec_hash`` in another study of the pool; else a live one there that goes before
    ``claimant`` (committed to training, or claiming earlier); else None."""
    running = []
    for other in pool_studies(storage, pool, study):
        st = cell_states(other).get(spec_hash)
        if st is None:
            continue
        if st.done:
            return PoolMatch(other.study_name, st.done[0], "done")
        for t in st.running:
            if is_stale(t):
                continue
            if claimant is None or t.user_attrs.get("outcome") == "running" or \
                    _order(t, other.study_name) < _order(claimant, study):
                running.append(PoolMatch(other.study_name, t, "running"))
    return running[0] if running else None


def claim_from_pool(study: optuna.Study, trial: optuna.Trial, pool: str, *, spec_hash: str, label: str, seed: int,
                    overrides: list[str], kind: str, tracking_uri: str | None) -> str | None:
    """Settle ``trial`` from the pool when it can: "reused" (told COMPLETE with the other study's value),
    "duplicate" (told PRUNED: another study's worker trains it), or None (this worker should train it)."""
    me = study._storage.get_trial(trial._trial_id)
    match = find_in_pool(study._storage, pool, study.study_name, spec_hash, me)
    if match is None:
        return None
    if match.status == "running":
        trial.set_user_attr("outcome", "duplicate")
        trial.set_user_attr("duplicate_of_study", match.study)
        trial.set_user_attr("duplicate_of", match.trial.number)
        study.tell(trial, state=TrialState.PRUNED)
        return "duplicate"
    run_id = match.trial.user_attrs.get("mlflow_run_id")
    for k, v in {"outcome": "reused", "reused_from_study": match.study, "reused_from": match.trial.number,
                 "mlflow_run_id": run_id, "value_metric": match.trial.user_attrs.get("value_metric")}.items():
        trial.set_user_attr(k, v)
    if run_id and tracking_uri:
        share_run(tracking_uri, run_id, study.study_name,
                  {"variant": label, "seed": seed, "overrides": " ".join(overrides), "kind": kind,
                   "trial": trial.number})
    study.tell(trial, match.trial.value)
    return "reused"


# ---- MLflow: one run, read by every study that uses it ------------------------------------------------------------
def share_run(uri: str, run_id: str, study: str, info: dict) -> None:
    """Tag a cell run as also standing for a cell of ``study`` (label, seed, overrides, kind of that study)."""
    from mlflow.tracking import MlflowClient

    MlflowClient(uri).set_tag(run_id, f"{SHARED_TAG}.{study}", json.dumps(info, sort_keys=True))


def shared_cell_runs(uri: str, study: str, role: str = "cell"):
    """Cell runs of other experiments that ``study`` reused, as ``mlflow.search_runs`` rows, with ``tags.variant``,
    ``tags.seed``, ``tags.overrides`` and ``tags.study_kind`` set to what they stand for in ``study`` and
    ``tags.shared_from`` to the study that trained them."""
    import mlflow
    import pandas as pd

    mlflow.set_tracking_uri(uri)
    col = f"tags.{SHARED_TAG}.{study}"
    runs = mlflow.search_runs(search_all_experiments=True, max_results=50000,
                              filter_string=f"tags.role = '{role}' and tags.`{SHARED_TAG}.{study}` LIKE '%'")
    if runs.empty:
        return pd.DataFrame()
    runs = runs.copy()
    info = [json.loads(v) for v in runs[col]]
    runs["tags.shared_from"] = runs.get("tags.study")
    for key, tag in (("variant", "variant"), ("seed", "seed"), ("overrides", "overrides"), ("kind", "study_kind")):
        runs[f"tags.{tag}"] = [str(i.get(key, "")) for i in info]
    runs["tags.study"] = study
    return runs


def shared_invocations(uri: str, shared, role: str = "invocation"):
    """The invocation runs (of the studies that trained them) that ``shared`` cell runs were nested under."""
    import mlflow
    import pandas as pd

    if shared.empty or "tags.mlflow.parentRunId" not in shared:
        return pd.DataFrame()
    parents = set(shared["tags.mlflow.parentRunId"].dropna())
    mlflow.set_tracking_uri(uri)
    found = [mlflow.search_runs(experiment_names=[s], filter_string=f"tags.role = '{role}'")
             for s in sorted(set(shared["tags.shared_from"].dropna()))]
    found = [f[f["run_id"].isin(parents)] for f in found if not f.empty]
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame()
