"""Where an Optuna study lives: a local SQLite file by default, any SQLAlchemy URL, or a journal file.

- ``sqlite:///runs/studies.db`` (default, beside the run folders): one host; workers started together create the
  tables once (a lock file beside the database);
- ``postgresql+psycopg2://user:pw@host/db`` (or any SQLAlchemy URL): several hosts;
- ``journal:///shared/path/study.log``: Optuna's append-only journal file, safe for several processes on one
  host or on a shared file system (Optuna advises it over SQLite for parallel workers).
"""

from __future__ import annotations

from pathlib import Path

from dfgan.tracking import set_up_once

JOURNAL_SCHEME = "journal://"
DEFAULT_STORAGE_FILE = "studies.db"


def default_storage_url(out_dir: str | Path) -> str:
    path = Path(out_dir).resolve() / DEFAULT_STORAGE_FILE
    return f"sqlite:///{path}"


def open_storage(url: str):
    """An Optuna storage object for ``url`` (see the module docstring for the accepted forms)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if url.startswith(JOURNAL_SCHEME):
        path = Path(url[len(JOURNAL_SCHEME):])
        if not str(path):
            raise ValueError(f"storage '{url}': a journal URL needs a file path, e.g. journal:///tmp/study.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"storage '{url}': expected a SQLAlchemy URL (sqlite:///x.db, postgresql://...) "
                         "or journal:///path/to/file.log")
    # the schema is created (or migrated) once when several workers start together
    return set_up_once(url, lambda: optuna.storages.RDBStorage(url))


def describe_storage(url: str) -> str:
    """The URL with any password hidden, for logs and MLflow tags."""
    if url.startswith(JOURNAL_SCHEME) or "@" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parseable: keep only the scheme
        return url.split("://", 1)[0] + "://***"
