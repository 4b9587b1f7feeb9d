"""Shared test settings: one thread, caches and MLflow in temporary folders."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own DFGAN_CACHE unless it sets one; MLflow never writes to the CWD."""
    monkeypatch.setenv("DFGAN_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def tiny_overrides(tmp_path, **extra) -> list[str]:
    """Overrides that make any variant train in about a second on one CPU thread."""
    o = {
        "model.nf": 4,
        "data.imsize": 32,
        "data.n_train": 64,
        "data.n_test": 16,
        "data.n_val": 16,
        "model.text_encoder.pretrain_steps": 2,
        "model.text_encoder.pretrain_batch_size": 8,
        "train.batch_size": 4,
        "train.steps": 4,
        "train.log_every": 1,
        "train.sample_every": 2,
        "train.checkpoint_every": 2,
        "train.out_dir": str(tmp_path / "runs"),
        "eval.n_images": 32,
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]
