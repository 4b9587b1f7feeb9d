"""Fingerprints of what a process computes with: the code it imported and the weights of a network.

``CODE`` is read once, when the dfgan package is first imported (``dfgan/__init__.py``): the git commit of the
checkout and, when its tracked files differ from that commit, the diff (``git diff HEAD``). A long-lived worker
that trains many study cells therefore records the code it actually runs, not whatever HEAD is when a cell
starts (a checkout can move under a running worker). ``weights_sha256`` hashes a network's state dict (names,
dtypes, shapes and bytes), wherever its weights came from.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GIT_TIMEOUT_S = 10


@dataclass(frozen=True)
class CodeVersion:
    """The commit of the imported code ("unknown" outside a git checkout) and its uncommitted diff."""

    commit: str
    diff: str = ""  # git diff HEAD of the tracked files at import ("" = clean)

    @property
    def dirty(self) -> bool:
        return bool(self.diff)

    @property
    def label(self) -> str:
        """``<sha>``, ``<sha>-dirty`` or ``unknown``: the ``git_commit`` tag."""
        return self.commit + ("-dirty" if self.dirty and self.commit != "unknown" else "")

    @property
    def diff_sha256(self) -> str | None:
        return hashlib.sha256(self.diff.encode()).hexdigest() if self.dirty else None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)


def read_code_version(root: str | Path = ROOT) -> CodeVersion:
    """The commit and diff of the checkout at ``root`` now (``unknown`` when git or the checkout is missing)."""
    try:
        sha = _git(Path(root), "rev-parse", "HEAD")
        if sha.returncode != 0:
            return CodeVersion("unknown")
        diff = _git(Path(root), "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff")
        return CodeVersion(sha.stdout.strip(), diff.stdout if diff.returncode == 0 else "")
    except (OSError, subprocess.SubprocessError):
        return CodeVersion("unknown")


CODE = read_code_version()  # the code this process imported


def file_commit(path: str | Path, root: str | Path = ROOT) -> tuple[str | None, bool]:
    """The short commit that last changed ``path`` in the checkout at ``root`` (None: untracked, no git, or
    outside the checkout) and whether the file differs from it now."""
    try:
        rel = Path(path).resolve().relative_to(Path(root).resolve())
        log = _git(Path(root), "log", "-1", "--format=%h", "--", str(rel))
        status = _git(Path(root), "status", "--porcelain", "--", str(rel))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None, False
    commit = log.stdout.strip() if log.returncode == 0 else ""
    return (commit or None), bool(status.stdout.strip()) if status.returncode == 0 else False


def weights_sha256(module) -> str | None:
    """sha256 of a network's state dict (sorted names, dtypes, shapes, bytes); None for what has none."""
    import torch  # here, not at the top: ``import dfgan`` (the CLI's start) stays free of torch

    state = getattr(module, "state_dict", None)
    if state is None:
        return None
    h = hashlib.sha256()
    for name, t in sorted(state().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
