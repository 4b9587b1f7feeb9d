"""``dfgan tracking replay FILE``: send an MLflow log that a run wrote locally while its tracking store was away
(``<run folder>/mlflow_spool.jsonl``, see ``dfgan.tracking_buffer``) to its run; points already there are skipped."""

from __future__ import annotations

from dfgan.cli import command


@command("tracking", "MLflow logs kept locally during a tracking-server outage: dfgan tracking replay FILE")
def _tracking_args(p):
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = sub.add_parser("replay", help="send a spool file (mlflow_spool.jsonl) to its MLflow run",
                       description="send a spool file (mlflow_spool.jsonl) to its MLflow run; metric points the run "
                                   "already holds are skipped, so it is safe to run twice")
    r.add_argument("file", help="the spool file, e.g. runs/full-<hash>/mlflow_spool.jsonl")
    r.add_argument("--tracking-uri", help="where the run is (default: the URI the file records)")
    return _tracking


def _tracking(args) -> int:
    from pathlib import Path

    from dfgan.tracking_buffer import replay

    path = Path(args.file)
    if not path.is_file():
        raise FileNotFoundError(f"spool file not found: {path}")
    counts = replay(path, args.tracking_uri)
    print(f"replayed {path}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" (now {path}.replayed)")
    return 0
