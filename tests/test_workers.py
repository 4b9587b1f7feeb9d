"""Several workers on one study: an MLflow tracking server on 127.0.0.1 and two `dfgan ablate` processes sharing
one Optuna journal file; every cell must be trained once and logged once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import mlflow
import optuna
import pytest

from dfgan.studies.definition import adhoc_definition
from dfgan.studies.runner import plan_study
from dfgan.studies.storage import open_storage
from tests.servers import mlflow_server_at, stop

pytestmark = pytest.mark.slow

WORKER_TIMEOUT_S = 420
TINY = ["model.nf=4", "data.imsize=32", "train.steps=2", "model.text_encoder.pretrain_steps=2",
        "data.n_train=64", "data.n_test=16", "train.batch_size=8", "train.threads=1", "eval.n_images=32"]


@pytest.fixture
def mlflow_server(tmp_path):
    with mlflow_server_at(tmp_path, f"sqlite:///{tmp_path / 'server.db'}") as url:
        yield url


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
            stop(w)
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
