"""nox sessions. All sessions share one virtual environment, ``.venv``, built on first use (torch alone is
several GB: one copy, not one per session) and refreshed when pyproject.toml changes.

    nox                                   # = nox -s tests
    nox -s ablation -- --variant no_magp  # arguments after -- go to `dfgan ablate`
    nox -s benchmark                      # throughput suites -> reports/benchmarks.md
    nox -s report -- --study NAME         # tables and figures -> reports/
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = str(VENV / "bin" / "python")
EXTRAS = ".[dev,minilm,proxy,fid]"
# glibc malloc thresholds: PyTorch CPU steps run up to 2x faster and far less noisy with these
# (shared/docs reference, Sec. 8); `dfgan` sets them itself too, this keeps pytest consistent.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "4294967296"}


def _venv(session: nox.Session) -> None:
    """Create .venv with this interpreter and install the project into it, once per pyproject.toml."""
    stamp = VENV / ".dfgan-install-stamp"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not Path(PY).exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
        session.run(PY, "-m", "pip", "install", "-q", "--upgrade", "pip", external=True)
    if not stamp.exists() or stamp.read_text() != want:
        session.run(PY, "-m", "pip", "install", "-q", "-e", EXTRAS, external=True)
        stamp.write_text(want)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (CPU only; GPU-only checks skip themselves)."""
    _venv(session)
    session.run(PY, "-m", "pytest", "-n", "2", "--dist", "loadgroup", *session.posargs, external=True,
                env=MALLOC_ENV)


@nox.session(default=False)
def ablation(session: nox.Session) -> None:
    """Train variants: ``nox -s ablation -- --variant no_magp`` (arguments go to ``dfgan ablate``)."""
    _venv(session)
    session.run(PY, "-m", "dfgan", "ablate", *session.posargs, external=True, env=MALLOC_ENV)


@nox.session(default=False)
def report(session: nox.Session) -> None:
    """Tables and figures of a study: ``nox -s report -- --study component_table`` (goes to ``dfgan report``)."""
    _venv(session)
    session.run(PY, "-m", "dfgan", "report", *session.posargs, external=True)


@nox.session(default=False)
def train(session: nox.Session) -> None:
    """One training run: ``nox -s train -- --variant full train.steps=500``."""
    _venv(session)
    session.run(PY, "-m", "dfgan", "train", *session.posargs, external=True, env=MALLOC_ENV)


@nox.session(default=False)
def benchmark(session: nox.Session) -> None:
    """Throughput suites (benchmarks/) -> reports/benchmarks.json, reports/benchmarks.md and figures.

    Arguments after -- go to pytest: ``-- --bench-profile smoke`` (does every suite run?),
    ``-- --bench-threads 1`` (steadier ratios on a shared CPU), ``-- -k targets`` (headline comparisons only).
    """
    _venv(session)
    out = ROOT / "reports" / "benchmarks.json"
    session.run(PY, "-m", "pytest", "benchmarks/", "-p", "no:xdist", "-q", f"--benchmark-json={out}",
                *session.posargs, external=True, env=MALLOC_ENV)
    session.run(PY, "-m", "benchmarks.report", str(out), external=True)


@nox.session(default=False)
def lint(session: nox.Session) -> None:
    _venv(session)
    session.run(PY, "-m", "ruff", "check", ".", external=True)
