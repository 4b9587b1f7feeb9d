"""Sample grids in a report: the last step's grid of one seed per row, copied beside the tables.

Every run renders the same captions with the same noise (``dfgan.train.samples.SampleGrid``), so the grids of
two rows differ only by what the rows differ in (and the seed's training).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from dfgan.reports.collect import StudyData

SAMPLE_SEED = 100  # DF-GAN's seed (train.seed's default): the run shown per row, else the smallest seed


def last_sample(run: pd.Series, uri: str) -> tuple[Path | None, str]:
    """The last step's sample grid of a run: from its run folder (params train.out_dir, name, tag spec_hash),
    else its MLflow artifacts; (None, why) when there is none."""
    out_dir, name, h = run.get("params.train.out_dir"), run.get("params.name"), run.get("tags.spec_hash")
    if isinstance(out_dir, str) and isinstance(name, str) and isinstance(h, str):
        found = sorted((Path(out_dir) / f"{name}-{h}" / "samples").glob("step_*.png"))
        if found:
            return found[-1], "run folder"
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        arts = sorted(a.path for a in client.list_artifacts(run["run_id"], "samples") if a.path.endswith(".png"))
        if arts:
            return Path(client.download_artifacts(run["run_id"], arts[-1])), "MLflow artifact"
    except Exception as e:  # no artifact store reachable
        return None, f"no sample grid ({type(e).__name__})"
    return None, "no sample grid"


def sample_grids(data: StudyData, rows: list[str], folder: Path) -> tuple[list[Path], list[str]]:
    """``folder/samples_<row>_seed<seed>.png`` per row with a finished run, and "row (seed): why" where none."""
    files, missing = [], []
    for row in rows:
        runs = data.cells[data.cells["variant"] == row]
        if runs.empty:
            continue
        seeds = sorted(int(s) for s in runs["seed"].dropna())
        seed = SAMPLE_SEED if SAMPLE_SEED in seeds else seeds[0]
        src, why = last_sample(runs[runs["seed"] == seed].iloc[0], data.uri)
        if src is None:
            missing.append(f"{row} (seed {seed}): {why}")
            continue
        dst = folder / f"samples_{row}_seed{seed}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        files.append(dst)
    return files, missing
