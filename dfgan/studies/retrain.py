"""The search's best trial, measured again: retrained on fresh seeds and evaluated on the test split.

A search selects on the validation split (``eval.split=val``), and the value of the trial it selects is biased
upwards by that selection (the winner's curse: among many noisy trials, the best one is also the luckiest). The
number to report is therefore not the best trial's own value: the best trial's values are trained again on
seeds no trial used (the spec's ``train.seed`` + 1, + 2, ...), each run evaluated on the test split, and reported
as the mean over those seeds with its Student-t 95% interval. The runs are
cells of the search's MLflow experiment (tag ``search_role=retrain``, label ``<variant>-best``), so
``dfgan report`` shows them beside the trials.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from dfgan.experiment import check_spec
from dfgan.studies.definition import Cell, cell_spec
from dfgan.studies.mlflow_glue import cell_metrics, cell_tags
from dfgan.tracking import Tracker
from dfgan.train import loop

RETRAIN_SEEDS = 3  # fresh seeds the best trial is retrained on (0: none)
RETRAIN_ROLE = "retrain"  # tag search_role of those runs (the trials' is "trial")
CONFIDENCE = 0.95


@dataclass
class RetrainOutcome:
    """The best trial on fresh seeds: ``values`` seed -> test value, their mean and 95% t interval."""

    metric: str
    values: dict[int, float] = field(default_factory=dict)
    mean: float | None = None
    lo: float | None = None
    hi: float | None = None
    sd: float | None = None
    run_ids: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    def summary(self) -> str:
        if self.mean is None:
            return f"{self.metric}: no retrained run"
        if self.lo is None:
            return f"{self.metric} = {self.mean:.4g} on test (1 seed: no interval)"
        return (f"{self.metric} = {self.mean:.4g} [{self.lo:.4g}, {self.hi:.4g}] on test ({CONFIDENCE:.0%} t "
                f"interval over {self.n} fresh seeds {sorted(self.values)}; seed SD {self.sd:.2g})")

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "values": self.values, "mean": self.mean, "lo": self.lo, "hi": self.hi,
                "sd": self.sd, "n": self.n, "run_ids": self.run_ids}


def fresh_seeds(base_seed: int, n: int) -> list[int]:
    """Seeds no trial used (every trial trains with ``base_seed``)."""
    return [base_seed + 1 + k for k in range(n)]


def summarise_values(metric: str, values: dict[int, float], run_ids: list[str] | None = None) -> RetrainOutcome:
    out = RetrainOutcome(metric, dict(values), run_ids=list(run_ids or []))
    xs = [v for v in values.values() if math.isfinite(v)]
    if xs:
        out.mean = sum(xs) / len(xs)
    if len(xs) >= 2:
        out.sd = math.sqrt(sum((x - out.mean) ** 2 for x in xs) / (len(xs) - 1))
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(xs) - 1)) * out.sd / math.sqrt(len(xs))
        out.lo, out.hi = out.mean - half, out.mean + half
    return out


def retrain_best(*, study: str, variant: str, values: dict[str, Any], trial_number: int, metric: str,
                 overrides: list[str], seeds: list[int], out_dir: str, uri: str, parent_run_id: str | None,
                 storage_label: str, progress: bool = False,
                 say: Callable[[str, str], None] = lambda what, text: None) -> RetrainOutcome:
    """Train ``variant`` with the best trial's ``values`` on each of ``seeds``, evaluated on the test split
    (``metric`` is the test-split name); resumable like any run (``loop.train(resume=True)``)."""
    cell = Cell(label=f"{variant}-best", variant=variant)
    # no periodic evaluation: nothing is pruned or selected any more, only the final test value counts
    ov = [*overrides, *(f"{k}={json.dumps(v)}" for k, v in values.items()), "eval.split=test", "eval.interval=0"]
    got: dict[int, float] = {}
    run_ids: list[str] = []
    for seed in seeds:
        spec = cell_spec(cell, seed, study, ov, out_dir)
        check_spec(spec)
        tags = cell_tags(study=study, cell=cell, seed=seed, trial_number=f"retrain-of-{trial_number}", grid=None,
                         overrides=overrides, kind="search", storage=storage_label)
        tags.update({"search_role": RETRAIN_ROLE, "retrain_of_trial": trial_number,
                     **{f"search.{k}": v for k, v in values.items()}})
        t0 = time.time()
        tracker = Tracker.for_spec(spec, enabled=True, uri=uri, parent_run_id=parent_run_id, extra_tags=tags)
        res = loop.train(spec, resume=True, progress=progress, tracker=tracker)
        metrics = cell_metrics(res, uri)
        if metric not in metrics:
            raise ValueError(f"the retrained best trial logged no '{metric}' (logged: {sorted(metrics)})")
        got[seed] = float(metrics[metric])
        run_ids.append(res.run_id)
        say("retrain", f"best trial #{trial_number}, seed {seed}  {time.time() - t0:.1f}s  {metric}={got[seed]:.4g}")
    return summarise_values(metric, got, run_ids)
