"""Studies: every variant x several seeds on one footing, run through Optuna, logged to MLflow.

Public API:
- :func:`load_study_definition`, :func:`adhoc_definition` (study files under ``ablations/studies``);
- :func:`plan_study` -> :class:`StudyPlan` (every cell's resolved spec), :func:`run_study`, :func:`study_status`;
- :func:`run_search` (TPE hyperparameter search with pruning; best spec exported as a variant file);
- :func:`open_storage` (SQLite file, any SQLAlchemy URL, or ``journal:///path``).

This package never imports the networks: it reads specs and MLflow runs and calls
``dfgan.train.loop.train(spec, ...)`` for each cell.
"""

from dfgan.studies.definition import (
    DEFAULT_STUDY,
    Cell,
    StudyDefinition,
    adhoc_definition,
    load_study_definition,
    parse_seeds,
    study_names,
)
from dfgan.studies.grid import StudyOutcome, StudyPlan, plan_study, run_study, study_status
from dfgan.studies.search import SearchOutcome, parse_params, run_search
from dfgan.studies.storage import default_storage_url, open_storage

__all__ = [
    "DEFAULT_STUDY", "Cell", "StudyDefinition", "adhoc_definition", "load_study_definition", "parse_seeds",
    "study_names", "StudyOutcome", "StudyPlan", "plan_study", "run_study", "study_status", "SearchOutcome",
    "parse_params", "run_search", "default_storage_url", "open_storage",
]
