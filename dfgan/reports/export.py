"""The report's record of every finished cell, enough to put the study back without its stores.

``reports/<study>/cells.jsonl`` holds one ``dfgan.studies.restore.ExportedCell`` per reported cell run: tags,
params, final metrics and the history of every metric logged at most ``HISTORY_POINTS`` times (the periodic
evaluations; a loss logged every few steps keeps its last value). ``dfgan restore`` reads it back into a fresh
Optuna storage and MLflow store when the machine that held them is gone.
"""

from __future__ import annotations

from pathlib import Path

from dfgan.reports.collect import StudyData
from dfgan.studies.restore import CELLS_FILE, HISTORY_POINTS, cell_from_row


def cell_histories(uri: str, run_id: str, keys: list[str]) -> dict[str, list[list[float]]]:
    """metric -> [[step, value], ...] for each of ``keys`` logged at most ``HISTORY_POINTS`` times (the last
    value per step, in step order)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    out = {}
    for key in keys:
        points = client.get_metric_history(run_id, key)
        if 1 < len(points) <= HISTORY_POINTS:
            last = {m.step: m.value for m in sorted(points, key=lambda m: (m.step, m.timestamp))}
            out[key] = [[int(s), float(v)] for s, v in sorted(last.items())]
    return out


def write_cells(data: StudyData, folder: Path) -> Path:
    """``folder/cells.jsonl``: the study's reported cells, one JSON line each."""
    path = folder / CELLS_FILE
    lines = []
    for _, row in data.cells.iterrows():
        r = row.to_dict()
        keys = [k[len("metrics."):] for k, v in r.items() if k.startswith("metrics.") and v == v and v is not None]
        lines.append(cell_from_row(r, cell_histories(data.uri, r["run_id"], keys)).to_json())
    path.write_text("".join(line + "\n" for line in lines))
    return path
