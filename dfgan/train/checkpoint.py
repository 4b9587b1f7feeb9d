"""Checkpoints: written atomically, read with ``weights_only=True``, refused when from another spec."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "dfgan-checkpoint-v1"


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a different experiment spec; the message lists the differing fields."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dfgan checkpoint (format {FORMAT}); for an official DF-GAN "
                         "state_epoch_*.pth use dfgan.official.load_checkpoint")
    return ckpt


def spec_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            diffs.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return diffs


def check_same_spec(ckpt: dict, spec, path) -> None:
    if ckpt.get("spec_hash") == spec.hash():
        return
    diffs = spec_differences(ckpt.get("experiment", {}), spec.experiment_dict())
    raise CheckpointMismatchError(
        f"checkpoint {path} was written by another spec (hash {ckpt.get('spec_hash')} vs {spec.hash()}):\n  "
        + "\n  ".join(diffs or ["(no field differs: the spec hashing changed)"])
    )
