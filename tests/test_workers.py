"""Several workers on one study: an MLflow tracking server on 127.0.0.1 and two `dfgan ablate` processes sharing
one Optuna journal file; every cell must be trained once and logged once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import mlflow
import optuna
import pytest

from dfgan.studies.definition import adhoc_definition
from dfgan.studies.runner import plan_study
from dfgan.studies.storage import open_storage

pytestmark = pytest.mark.slow

SERVER_START_S = 180  # bounded wait for `mlflow server` (it migrates a fresh database first: ~20 s here)
WORKER_TIMEOUT_S = 420
TINY = ["model.nf=4", "data.imsize=32", "train.steps=2", "model.text_encoder.pretrain_steps=2",
        "data.n_train=64", "data.n_test=16", "train.batch_size=8", "train.threads=1", "eval.n_images=32"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    """End the process and its children (it was started in its own session)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def mlflow_server(tmp_path):
    port = _free_port()
    log_path = tmp_path / "mlflow-server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + SERVER_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"mlflow server not ready after {SERVER_START_S}s:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


def test_two_workers_share_one_study(tmp_path, mlflow_server):
    journal = f"journal://{tmp_path / 'study.log'}"
    overrides = [*TINY, f"train.out_dir={tmp_path / 'runs'}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"DFGAN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    cmd = [sys.executable, "-m", "dfgan", "ablate", "--study", "shared", "--variants", "full,no_magp", "--seeds", "2",
           "--storage", journal, "--tracking-uri", mlflow_server, "--no-progress", *overrides]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = []
    try:
        for path in logs:
            with open(path, "w") as log:
                workers.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True, cwd=tmp_path))
        deadline = time.time() + WORKER_TIMEOUT_S
        for w in workers:
            w.wait(timeout=max(1, deadline - time.time()))
    finally:
        for w in workers:
            _stop(w)
    outputs = "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in logs)
    assert [w.returncode for w in workers] == [0, 0], outputs

    plan = plan_study(adhoc_definition("shared", ["full", "no_magp"], 2), overrides=overrides)
    want = sorted(e.hash for e in plan.entries)
    study = optuna.load_study(study_name="shared", storage=open_storage(journal))
    trained = Counter(t.user_attrs["spec_hash"] for t in study.trials if t.user_attrs.get("outcome") == "trained")
    assert sorted(trained) == want and set(trained.values()) == {1}, (trained, outputs)
    workers_used = {t.user_attrs["worker"]["pid"] for t in study.trials if t.user_attrs.get("outcome") == "trained"}
    assert 1 <= len(workers_used) <= 2

    mlflow.set_tracking_uri(mlflow_server)
    runs = mlflow.search_runs(experiment_names=["shared"], filter_string="tags.role = 'cell'")
    assert sorted(runs["tags.spec_hash"]) == want, outputs  # logged once each, nothing else
    assert (runs["status"] == "FINISHED").all()
    parents = mlflow.search_runs(experiment_names=["shared"], filter_string="tags.role = 'invocation'")
    assert set(runs["tags.mlflow.parentRunId"]) <= set(parents["run_id"]) and 1 <= len(parents) <= 2
