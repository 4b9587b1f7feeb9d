"""A real PostgreSQL study: a PostgreSQL server on 127.0.0.1 (Debian's binaries, installed by .ci/postgres)
holds the Optuna study and the store of an `mlflow server`; two `dfgan ablate` workers, started together on a
new database, share the study: every cell is trained once and logged once. Skipped, saying why, only where the
server cannot start."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import mlflow
import optuna
import pytest

from dfgan.studies.definition import adhoc_definition
from dfgan.studies.runner import plan_study
from dfgan.studies.storage import open_storage
from tests.servers import free_port, mlflow_server_at, stop
from tests.test_workers import TINY

pytestmark = pytest.mark.slow

WORKER_TIMEOUT_S = 420


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run it as the ``postgres`` user the package creates."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres():
    """A throw-away server on 127.0.0.1 (trust authentication, data in a temporary folder); its URL base."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin): run .ci/postgres "
                    "(apt-get install postgresql) to run this test")
    pytest.importorskip("psycopg2", reason="psycopg2 (the dev extra psycopg2-binary) is not installed")
    data = Path(tempfile.mkdtemp(prefix="dfgan-pg-"))
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    log = data / "server.log"
    try:
        init = subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U",
                                            "postgres", "-E", "UTF8"]), capture_output=True, text=True, timeout=120)
        if init.returncode != 0:
            pytest.skip(f"PostgreSQL cannot start here: initdb failed: {init.stderr.strip()[-500:]}")
        start = subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-l", str(log), "-w",
                                             "-t", "60", "-o", f"-p {port} -k {data} -h 127.0.0.1", "start"]),
                               capture_output=True, text=True, timeout=90)
        if start.returncode != 0:
            text = log.read_text()[-500:] if log.exists() else start.stderr
            pytest.skip(f"PostgreSQL cannot start here: pg_ctl start failed: {text.strip()}")
        for db in ("studies", "mlflow"):
            subprocess.run(_as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                         "postgres", db]), check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data / "db"), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_a_postgresql_study(tmp_path, postgres):
    storage = f"{postgres}/studies"
    with mlflow_server_at(tmp_path, f"{postgres}/mlflow") as server:
        overrides = [*TINY, f"train.out_dir={tmp_path / 'runs'}"]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env.update({"DFGAN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
        cmd = [sys.executable, "-m", "dfgan", "ablate", "--study", "pg", "--variants", "full,no_magp", "--seeds",
               "2", "--storage", storage, "--tracking-uri", server, "--no-progress", *overrides]
        logs = [tmp_path / f"worker{i}.log" for i in range(2)]
        workers = []
        t0 = time.time()
        try:
            for path in logs:  # together, on a new database: the schema is created once
                with open(path, "w") as log:
                    workers.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                    start_new_session=True, cwd=tmp_path))
            for w in workers:
                w.wait(timeout=max(1, t0 + WORKER_TIMEOUT_S - time.time()))
        finally:
            for w in workers:
                stop(w)
        outputs = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in logs)
        assert [w.returncode for w in workers] == [0, 0], outputs

        plan = plan_study(adhoc_definition("pg", ["full", "no_magp"], 2), overrides=overrides)
        want = sorted(e.hash for e in plan.entries)
        study = optuna.load_study(study_name="pg", storage=open_storage(storage))
        trained = Counter(t.user_attrs["spec_hash"] for t in study.trials if t.user_attrs.get("outcome") == "trained")
        assert sorted(trained) == want and set(trained.values()) == {1}, (trained, outputs)

        mlflow.set_tracking_uri(server)
        cells = mlflow.search_runs(experiment_names=["pg"], filter_string="tags.role = 'cell'")
        assert sorted(cells["tags.spec_hash"]) == want, outputs  # logged once each
        assert (cells["status"] == "FINISHED").all() and cells["metrics.attr_acc"].notna().all()
        for run_id in cells["run_id"]:
            steps = [m.step for m in mlflow.tracking.MlflowClient(server).get_metric_history(run_id, "loss_g")]
            assert steps == [2], steps  # logged at the end (log_every 10), once
