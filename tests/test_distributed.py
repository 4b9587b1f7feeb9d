"""torchrun with 2 CPU processes (gloo): one MLflow run, logging from rank 0 only, data sharded, ranks in sync."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import mlflow
import pytest
import torch

from dfgan import runs
from dfgan.experiment import resolve_spec
from dfgan.run_identity import run_folder
from dfgan.train.batches import BatchPlan
from tests.conftest import tiny_overrides


def test_ranks_take_disjoint_slices_of_one_global_batch():
    whole = BatchPlan(64, 10, 8, seed=3, world_size=1).keys(5)
    r0 = BatchPlan(64, 10, 4, seed=3, world_size=2, rank=0).keys(5)
    r1 = BatchPlan(64, 10, 4, seed=3, world_size=2, rank=1).keys(5)
    assert r0 + r1 == whole  # two ranks of 4 see exactly one process's batch of 8
    assert not {k[0] for k in r0} & {k[0] for k in r1}
    assert len(whole) == 8 and len(r0) == len(r1) == 4


def test_every_image_once_per_epoch():
    plan = BatchPlan(20, 5, 4, seed=1)
    seen = [k[0] for step in range(5) for k in plan.keys(step)]
    assert sorted(seen) == list(range(20))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_torchrun_two_processes(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = tiny_overrides(tmp_path, **{"train.batch_size": 2})
    # build the caches (data, text encoder) once, as a first single-process run would
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": uri}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "dfgan", "train", "--variant", "full", "--quiet", *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(experiment_names=["dfgan"])
    assert len(found) == 1 and found["status"].iloc[0] == "FINISHED"
    assert found["tags.world_size"].iloc[0] == "2"
    client = mlflow.tracking.MlflowClient(uri)
    hist = client.get_metric_history(found["run_id"].iloc[0], "loss_d")
    assert [m.step for m in hist] == [1, 2, 3, 4]  # logged once per step, by rank 0 only
    spec = resolve_spec("full", overrides=overrides)
    ckpt = runs.load_checkpoint(run_folder(spec) / "checkpoint.pt")
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["models"].values() if v.is_floating_point())
