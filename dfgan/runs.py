"""Files on disk: run folders, checkpoints, the cache folder, and the one atomic write every writer uses.

A run lives in ``<train.out_dir>/<spec.name>-<run hash>/``: ``checkpoint.pt`` (resumable state),
``final_weights.pt`` (the trained networks), ``spec.yaml``, ``nop.json``, ``metrics.jsonl`` and ``samples/``.
Checkpoints are written atomically (temporary file in the same folder, fsync, rename) and read with
``weights_only=True``, so a hostile pickle is never executed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

FORMAT = "dfgan-checkpoint-v1"
CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "final_weights.pt"


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a different experiment spec; the message lists the differing fields."""


class RunExistsError(RuntimeError):
    """A run folder with a checkpoint exists and neither resume nor restart was asked for."""


def cache_dir() -> Path:
    """Where cached artifacts (built-in data, pretrained text encoders, reference statistics) live:
    ``$DFGAN_CACHE`` if set, else ``~/.cache/dfgan``."""
    return Path(os.environ.get("DFGAN_CACHE") or Path.home() / ".cache" / "dfgan")


def run_dir(out_dir: str | Path, name: str, run_hash: str) -> Path:
    """The folder of the run of spec ``name`` with identity ``run_hash`` under ``train.out_dir``."""
    return Path(out_dir) / f"{name}-{run_hash}"


# ---- writing ------------------------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, then rename over ``path``: readers see the old
    file or the whole new one, never a part. The temporary file is removed on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_or_make(path: str | Path, make: Callable[[], Any]) -> Any:
    """The weights-only torch object at ``path``; the first time, ``make()`` builds it and it is saved atomically.
    The cache of a network trained once per dataset (the attribute classifier, the DAMSM evaluator pair)."""
    path = Path(path)
    if not path.is_file():
        atomic_torch_save(make(), path)
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- reading ------------------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A resumable ``checkpoint.pt`` (format ``FORMAT``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dfgan checkpoint (format {FORMAT}); for an official DF-GAN "
                         "state_epoch_*.pth use dfgan.official.load_checkpoint")
    return ckpt


def read_run(path: str | Path) -> dict[str, Any]:
    """The saved state of a run folder, or of a ``checkpoint.pt`` / ``final_weights.pt`` given directly:
    ``state`` (the file's dict, with ``spec`` and ``models``), ``file``, ``run_dir``, and the MLflow
    ``mlflow_run_id`` / ``mlflow_tracking_uri`` (from the checkpoint when the weights file lacks them).
    A folder prefers ``checkpoint.pt``: it also records the dataset hash and the text encoder."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = [p for p in (path / CHECKPOINT, path / FINAL_WEIGHTS) if p.is_file()]
        if not files:
            raise FileNotFoundError(f"{path} holds neither {CHECKPOINT} nor {FINAL_WEIGHTS}: not a dfgan run folder")
        run_folder, weights_file = path, files[0]
    elif path.is_file():
        run_folder, weights_file = path.parent, path
    else:
        raise FileNotFoundError(f"run folder or checkpoint not found: {path}")
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "models" not in state or "spec" not in state:
        raise ValueError(f"{weights_file} is not a dfgan checkpoint or final-weights file (needs 'spec' and 'models')")
    run_id, uri = state.get("mlflow_run_id"), state.get("mlflow_tracking_uri")
    if (run_id is None or uri is None) and (run_folder / CHECKPOINT).is_file() and weights_file.name != CHECKPOINT:
        ckpt = load_checkpoint(run_folder / CHECKPOINT)
        run_id, uri = run_id or ckpt.get("mlflow_run_id"), uri or ckpt.get("mlflow_tracking_uri")
    return {"state": state, "file": weights_file, "run_dir": run_folder, "step": int(state.get("step", 0)),
            "mlflow_run_id": run_id, "mlflow_tracking_uri": uri}


# ---- identity -----------------------------------------------------------------------------------------------------


def spec_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return diffs


def check_same_experiment(ckpt: dict, run_hash: str, identity: dict, path) -> None:
    """Refuse a checkpoint whose run hash differs from ``run_hash``, naming every differing field."""
    if ckpt.get("spec_hash") == run_hash:
        return
    diffs = spec_differences(ckpt.get("experiment", {}), identity)
    raise CheckpointMismatchError(
        f"checkpoint {path} was written by another spec (hash {ckpt.get('spec_hash')} vs {run_hash}):\n  "
        + "\n  ".join(diffs or ["(no field differs: the spec hashing changed)"])
    )
