"""Read a study back from MLflow: its finished cell runs, their metric histories and its invocations."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from dfgan.studies.pool import shared_cell_runs, shared_invocations
from dfgan.studies.restore import HISTORY_LOST, RESTORED_HISTORY_TAG

ROLE_CELL = "cell"
ROLE_INVOCATION = "invocation"


@dataclass
class StudyData:
    """Everything a report needs, as DataFrames (one row per run; ``metrics.*``, ``params.*``, ``tags.*``)."""

    study: str
    uri: str
    experiment_id: str
    cells: pd.DataFrame  # FINISHED cell runs of the chosen overrides set, one per (variant, seed)
    other_cells: pd.DataFrame  # cell runs left out (not finished, replaced, other overrides sets)
    invocations: pd.DataFrame
    overrides_set: str | None
    notes: list[str] = field(default_factory=list)

    @property
    def variants(self) -> list[str]:
        return list(dict.fromkeys(self.cells["variant"]))

    def metric_names(self) -> list[str]:
        cols = [c[len("metrics."):] for c in self.cells.columns if c.startswith("metrics.")]
        return [c for c in cols if self.cells[f"metrics.{c}"].notna().any()]

    def tag(self, name: str) -> pd.Series:
        col = f"tags.{name}"
        return self.cells[col] if col in self.cells else pd.Series([None] * len(self.cells), index=self.cells.index)


class NoRunsError(ValueError):
    """The study has no finished cell runs at this tracking URI."""


def _search(uri: str, study: str, role: str) -> pd.DataFrame:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[study], filter_string=f"tags.role = '{role}'", max_results=50000)


def collect(study: str, uri: str, overrides_set: str | None = None) -> StudyData:
    """Finished cell runs of ``study`` (its own, and those of its cell pool it reused: ``dfgan.studies.pool``);
    of several runs of one (variant, seed), the latest counts.

    A study run at several sets of common overrides (e.g. first at 200 steps, then at 2000) is several
    studies in one experiment: by default the set of the most recent run is reported, the others are named
    in a note; ``overrides_set='all'`` mixes them.
    """
    import mlflow

    mlflow.set_tracking_uri(uri)
    exp = mlflow.get_experiment_by_name(study)
    shared = shared_cell_runs(uri, study, ROLE_CELL)
    if exp is None and shared.empty:
        known = sorted(e.name for e in mlflow.search_experiments())
        raise NoRunsError(f"no MLflow experiment '{study}' at {uri}; experiments there: {known}")
    runs = _search(uri, study, ROLE_CELL) if exp is not None else pd.DataFrame()
    invocations = _search(uri, study, ROLE_INVOCATION) if exp is not None else pd.DataFrame()
    notes: list[str] = []
    if not shared.empty:
        runs = pd.concat([runs, shared], ignore_index=True)
        invocations = pd.concat([invocations, shared_invocations(uri, shared, ROLE_INVOCATION)], ignore_index=True)
        notes.append(f"{len(shared)} cell run(s) trained by another study of the cell pool are reused here (same "
                     f"spec hash; trained by: {', '.join(sorted(set(shared['tags.shared_from'].dropna())))})")
    if runs.empty:
        raise NoRunsError(f"experiment '{study}' at {uri} has no cell runs (tag role=cell)")
    runs = runs.copy()
    runs["variant"] = runs["tags.variant"]
    runs["seed"] = pd.to_numeric(runs.get("tags.seed"), errors="coerce").astype("Int64")
    if "tags.overrides" not in runs:
        runs["tags.overrides"] = ""
    runs["tags.overrides"] = runs["tags.overrides"].fillna("")
    finished = runs[runs["status"] == "FINISHED"].sort_values("end_time")
    if finished.empty:
        raise NoRunsError(f"experiment '{study}' has no FINISHED cell runs ({len(runs)} others)")
    chosen = overrides_set
    if overrides_set in (None, "latest"):
        chosen = finished["tags.overrides"].iloc[-1]
    if chosen != "all":
        sets = sorted(set(finished["tags.overrides"]) - {chosen})
        if chosen not in set(finished["tags.overrides"]):
            raise NoRunsError(f"no finished runs with overrides '{chosen}'; sets present: "
                              f"{sorted(set(finished['tags.overrides']))}")
        if sets:
            notes.append(f"{len(sets)} other set(s) of common overrides exist in this experiment and are left "
                         f"out (choose with --overrides-set): " + "; ".join(f"'{s}'" for s in sets))
        finished = finished[finished["tags.overrides"] == chosen]
    latest = finished.drop_duplicates(subset=["variant", "seed"], keep="last")
    replaced = len(finished) - len(latest)
    if replaced:
        notes.append(f"{replaced} older finished run(s) of the same (variant, seed) were replaced by the latest")
    other = runs[~runs["run_id"].isin(latest["run_id"])]
    n_failed = int((other["status"] == "FAILED").sum())
    if n_failed:
        notes.append(f"{n_failed} failed cell run(s) are not in the tables (their errors are in MLflow, tag 'error')")
    notes += restored_notes(latest)
    exp_id = exp.experiment_id if exp is not None else ""
    return StudyData(study, uri, exp_id, latest.reset_index(drop=True), other.reset_index(drop=True),
                     invocations, None if chosen == "all" else chosen, notes)


def restored_notes(cells: pd.DataFrame) -> list[str]:
    """A note on the cell runs that ``dfgan restore`` put back from an export (tag ``restored_from``): how many,
    from where, and how many of them kept only their final values."""
    if "tags.restored_from" not in cells or not cells["tags.restored_from"].notna().any():
        return []
    r = cells[cells["tags.restored_from"].notna()]
    lost = int((r.get(f"tags.{RESTORED_HISTORY_TAG}", pd.Series(dtype=str)) == HISTORY_LOST).sum())
    text = (f"{len(r)} of the {len(cells)} cell runs were restored from a committed export, not trained in this "
            f"store (`dfgan restore`; from {', '.join(sorted(set(r['tags.restored_from'])))})")
    if lost:
        text += (f"; {lost} of them have their final values only (the export held no periodic evaluations), so "
                 "values before the last step have fewer seeds")
    return [text]


def metric_history(data: StudyData, keys: list[str]) -> pd.DataFrame:
    """Long table (variant, seed, run_id, metric, step, value) of every logged value of ``keys``."""
    import mlflow

    client = mlflow.tracking.MlflowClient(data.uri)
    rows = []
    for _, r in data.cells.iterrows():
        for key in keys:
            for m in client.get_metric_history(r["run_id"], key):
                rows.append({"variant": r["variant"], "seed": r["seed"], "run_id": r["run_id"], "metric": key,
                             "step": m.step, "value": m.value})
    return pd.DataFrame(rows, columns=["variant", "seed", "run_id", "metric", "step", "value"])
