"""Studies: every variant x several seeds on one footing, run through Optuna, logged to MLflow.

Modules:
- ``definition``: study files under ``ablations/studies`` (``load_study_definition``, ``adhoc_definition``) and
  each cell's resolved spec; imports only ``dfgan.spec``, so reports can read study files;
- ``runner``: ``plan_study`` -> ``StudyPlan`` (every cell's spec, checked), ``run_study``, ``study_status``;
  each cell is one ``dfgan.train.loop.train`` run;
- ``search``: ``run_search`` (TPE hyperparameter search with pruning; best spec exported as a variant file);
- ``storage``: ``open_storage`` (SQLite file, any SQLAlchemy URL, or ``journal:///path``);
- ``ledger`` (cell states, heartbeats, stale trials) and ``mlflow_glue`` (invocation and cell runs).
"""
