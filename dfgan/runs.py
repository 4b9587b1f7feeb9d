"""Files on disk: run folders, checkpoints, the cache folder, and the one atomic write every writer uses.

A run lives in ``<train.out_dir>/<spec.name>-<run hash>/``: ``checkpoint.pt`` (resumable state),
``final_weights.pt`` (the trained networks), ``final.json`` (written last: the run is complete, with its final
evaluation), ``mlflow_run.json`` (the MLflow run it logs to, written when that run opens),
``mlflow_spool.jsonl`` (only while the tracking store is away: what is to be sent to it), ``spec.yaml``,
``nop.json``, ``metrics.jsonl`` and ``samples/``. Every file is written atomically (temporary file in the same
folder, fsync, rename; temporaries a killed process left behind are removed by the next run of that folder) and
checkpoints are read with ``weights_only=True``, so a hostile pickle is never executed. One process at a time
trains a run folder (``run_lock``: a lock file beside it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch

FORMAT = "dfgan-checkpoint-v1"
CHECKPOINT = "checkpoint.pt"
FINAL_WEIGHTS = "final_weights.pt"
FINAL_RECORD = "final.json"
RUN_RECORD = "mlflow_run.json"
SPOOL = "mlflow_spool.jsonl"  # the run's MLflow log while the tracking store was away (dfgan.tracking_buffer)
TEMP_GLOB = ".*.tmp"  # atomic_write's temporaries
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=,-]*")  # a run or variant name: no path separators
KILL_ENV = "DFGAN_TEST_KILL_AT"  # test hook, see kill_point


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a different experiment spec; the message lists the differing fields."""


class RunExistsError(RuntimeError):
    """A run folder with a checkpoint exists and neither resume nor restart was asked for."""


class RunBusyError(RuntimeError):
    """Another process is training the same run folder."""


class CheckpointFileError(ValueError):
    """A checkpoint or weights file that cannot be read (truncated, empty, not a torch file, or holding objects
    other than tensors and plain containers); the message names the file."""


def check_name(name: str, what: str = "name") -> str:
    """``name`` if it is a plain name (letters, digits, ``_ . + = , -``, not starting with ``.`` or ``-``):
    names become folder and file names, and a path separator or ``..`` would leave the intended folder."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"{what} {name!r} is not a plain name: use letters, digits and _ . + = , - "
                         "(no path separators, not starting with '.' or '-')")
    return name


def kill_point(name: str) -> None:
    """Test hook: SIGKILL this process at the named point when ``$DFGAN_TEST_KILL_AT`` equals ``name``.
    Points: ``step:N`` (after step N is logged), ``write:FILE:N`` (the N-th atomic write of FILE in this process,
    after its bytes are written and before the rename), ``final-eval`` (after the final evaluation is logged,
    before ``final.json``). Unset (always, outside tests), it costs one dict lookup."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


_WRITES: dict[str, int] = {}


def cache_dir() -> Path:
    """Where cached artifacts (built-in data, pretrained text encoders, reference statistics) live:
    ``$DFGAN_CACHE`` if set, else ``~/.cache/dfgan``."""
    return Path(os.environ.get("DFGAN_CACHE") or Path.home() / ".cache" / "dfgan")


def run_dir(out_dir: str | Path, name: str, run_hash: str) -> Path:
    """The folder of the run of spec ``name`` with identity ``run_hash`` under ``train.out_dir``."""
    return Path(out_dir) / f"{check_name(name, 'run name')}-{run_hash}"


@contextlib.contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on run folder ``folder`` (a ``.<folder>.lock`` file beside it, so that
    ``--restart`` may delete the folder): raises ``RunBusyError`` if another process holds it. The lock goes
    with the process, however it ends; while it is held, anything a process left in the folder is stale."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    path = folder.with_name(f".{folder.name}.lock")
    with open(path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise RunBusyError(f"{folder} is being trained by another process ({holder}); wait for it, or stop it "
                               "and resume") from None
        f.seek(0), f.truncate()
        f.write(f"pid {os.getpid()}\n"), f.flush()
        try:
            yield folder
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def cache_build_lock(path: str | Path, what: str = "it") -> Iterator[bool]:
    """Hold an exclusive lock for building cache file ``path`` (a ``.<name>.lock`` file beside it), waiting
    for another process that holds it, and say so on stderr: two study workers that start together then
    build a DAMSM encoder, a classifier or reference statistics once, not twice. Yields whether ``path`` still
    has to be built (False when the process waited for has written it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"dfgan: waiting for another process that is building {what} ({path})", file=sys.stderr,
                  flush=True)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield not path.is_file()
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def clean_orphans(folder: str | Path) -> list[Path]:
    """Remove the temporaries that killed atomic writes left in ``folder`` (call it holding ``run_lock``)."""
    folder = Path(folder)
    found = sorted(folder.glob(TEMP_GLOB)) + sorted(folder.glob(f"*/{TEMP_GLOB}")) if folder.is_dir() else []
    for p in found:
        p.unlink(missing_ok=True)
    return found


# ---- writing ------------------------------------------------------------------------------------------------------


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(f)`` into a temporary file beside ``path``, fsync, then rename over ``path``: readers see the old
    file or the whole new one, never a part. The temporary file is removed on any error; an ``OSError`` (a full
    disk: ENOSPC, a file-size limit: EFBIG) is raised again naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, f"cannot write {path}: {e.strerror}", str(path)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            _WRITES[path.name] = n = _WRITES.get(path.name, 0) + 1
            kill_point(f"write:{path.name}:{n}")
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        os_error = _os_error_in(e)  # torch.save turns a failed write into a RuntimeError
        if os_error is not None:
            raise OSError(os_error.errno, f"cannot write {path}: {os_error.strerror or os_error}", str(path)) from None
        raise


def _os_error_in(e: BaseException | None) -> OSError | None:
    """The OSError with an errno at ``e`` or among its causes and contexts, if any."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_or_make(path: str | Path, make: Callable[[], Any]) -> Any:
    """The weights-only torch object at ``path``; the first time, ``make()`` builds it and it is saved atomically.
    The cache of a network trained once per dataset (the attribute classifier, the DAMSM evaluator pair); processes
    that need it together wait for the one building it (``cache_build_lock``)."""
    path = Path(path)
    if not path.is_file():
        with cache_build_lock(path, path.parent.name) as missing:
            if missing:
                atomic_torch_save(make(), path)
    return torch.load(path, map_location="cpu", weights_only=True)


# ---- reading ------------------------------------------------------------------------------------------------------


def torch_load(path: str | Path, map_location="cpu") -> Any:
    """``torch.load(path, weights_only=True)``; a file that cannot be read so raises ``CheckpointFileError``
    naming it and saying why (never a suggestion to load it with ``weights_only=False``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFileError(f"{path} is empty (0 bytes): a write that never finished; delete it (a run "
                                  "folder's checkpoint.pt resumes, final weights are rewritten by --resume)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, or a pickle of objects other than tensors
        raise CheckpointFileError(f"cannot read {path} ({size} bytes): {load_failure(e)}") from None


def load_failure(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in words (torch's own message suggests
    ``weights_only=False``, which would run whatever code the file holds)."""
    text = str(error)
    if "Weights only load failed" in text or "Unsupported global" in text or "weights_only" in text:
        return ("it holds objects other than tensors and plain containers (a pickle of code, or of classes dfgan "
                "never writes); it was refused without running it")
    first = text.splitlines()[0].split(". ")[0][:200] if text else ""
    return f"truncated or not a torch file ({type(error).__name__}: {first})"


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """A resumable ``checkpoint.pt`` (format ``FORMAT``)."""
    path = Path(path)
    ckpt = torch_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dfgan checkpoint (format {FORMAT}); for an official DF-GAN "
                         "state_epoch_*.pth use dfgan.official.load_checkpoint")
    return ckpt


def checkpoint_step(run_folder: str | Path) -> int | None:
    """The step a run folder's ``checkpoint.pt`` resumes from; None where it has no readable dfgan checkpoint.
    Memory-mapped: a status listing reads the file's index, not its weights."""
    path = Path(run_folder) / CHECKPOINT
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # truncated or foreign: the run itself says why when it resumes
        return None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or ckpt.get("step") is None:
        return None
    return int(ckpt["step"])


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
    state = torch_load(weights_file)
    if not isinstance(state, dict) or "models" not in state or "spec" not in state:
        raise ValueError(f"{weights_file} is not a dfgan checkpoint or final-weights file (needs 'spec' and 'models')")
    run_id, uri = state.get("mlflow_run_id"), state.get("mlflow_tracking_uri")
    if (run_id is None or uri is None) and (run_folder / CHECKPOINT).is_file() and weights_file.name != CHECKPOINT:
        ckpt = load_checkpoint(run_folder / CHECKPOINT)
        run_id, uri = run_id or ckpt.get("mlflow_run_id"), uri or ckpt.get("mlflow_tracking_uri")
    return {"state": state, "file": weights_file, "run_dir": run_folder, "step": int(state.get("step", 0)),
            "mlflow_run_id": run_id, "mlflow_tracking_uri": uri}


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A small JSON record of a run folder (``final.json``, ``mlflow_run.json``); None if absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True))


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
