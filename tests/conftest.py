"""Shared test settings: one thread, caches and MLflow in temporary folders."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

# The device the suite trains on: cpu (default, also on a machine with a GPU) or cuda, which the GPU check
# (benchmarks/gpu_check.py) sets. Tests that build runs through ``tiny_overrides`` follow it, others take the
# ``test_device`` fixture; tests that name the CPU stay on it.
TEST_DEVICE = os.environ.get("DFGAN_TEST_DEVICE", "cpu")


def pytest_configure(config):
    if TEST_DEVICE not in ("cpu", "cuda"):
        raise pytest.UsageError(f"DFGAN_TEST_DEVICE={TEST_DEVICE!r}: use cpu or cuda")
    if TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("DFGAN_TEST_DEVICE=cuda but torch sees no CUDA device")


@pytest.fixture(scope="session")
def test_device() -> torch.device:
    """``$DFGAN_TEST_DEVICE`` (default cpu) as a torch device."""
    return torch.device(TEST_DEVICE)


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
        "train.device": TEST_DEVICE,
        "train.steps": 4,
        "train.log_every": 1,
        "train.sample_every": 2,
        "train.checkpoint_every": 2,
        "train.out_dir": str(tmp_path / "runs"),
        "eval.n_images": 32,
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]
