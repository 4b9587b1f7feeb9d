"""Reports: a study's tables (Markdown + LaTeX booktabs) and figures, generated from its MLflow runs.

``build_report(study)`` reads the finished cell runs of the MLflow experiment named after the study and
writes ``reports/<study>/``: ``README.md`` (every table, figure and the provenance), one ``.md`` and one
``.tex`` per table, ``figures/*.png``, ``runs.csv`` (one row per cell run) and ``provenance.json``.
Which tables: Table 1 style (per variant: quality, NoP, sampling throughput) always; Table 2 style
(differences to the reference with t intervals) for component-table and grid studies; Table 3 style
for fusion studies; main effects and interactions for factorial studies; a trial table for searches.
This package never imports the networks: it reads MLflow, the study files and benchmark records. Modules:
``build`` (``build_report``), ``collect`` (runs from MLflow), ``stats``, ``tables``, ``figures``, ``provenance``,
``published`` (the paper's numbers), ``benchmarks`` (throughput records).
"""
