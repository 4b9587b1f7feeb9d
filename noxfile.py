"""nox sessions. All sessions share one virtual environment, ``.venv``, built on first use (torch alone is
several GB: one copy, not one per session) and refreshed when pyproject.toml changes.

    nox                                   # = nox -s tests
    nox -s ablation -- --variant no_magp  # arguments after -- go to `dfgan ablate`
    nox -s benchmark                      # throughput suites -> reports/benchmarks.md
    nox -s report -- --study NAME         # tables and figures -> reports/
    nox -s gpu                            # the GPU check -> reports/benchmarks_gpu.md (needs CUDA; else a dry run)

``nox -s gpu`` (``benchmarks/gpu_check.py``, arguments after -- go to it) runs, within 8 minutes, each part under
its own time cap: the test suite on CUDA (``DFGAN_TEST_DEVICE=cuda``), training and sampling throughput of
``full`` at 256 px batch 32 in fp32 and bf16 (with cuDNN autotuning, CUDA graphs and torch.compile where they
apply) and at 512 px (cost and memory per image), FID of 10,000 generated images end to end, and the device's
datasheet and measured peaks with the achieved fractions. It installs nothing beyond ``.venv``, whose first build
comes before those 8 minutes (5.8 min measured here on a busy 2-core machine from local wheels). Without CUDA it
is a dry run at tiny sizes on the CPU, written to a temporary folder (``-- --out PATH`` to choose;
``tests/test_gpu_check.py`` runs it). On a machine whose Python already has torch and no network to build
``.venv`` with, run it directly: ``python3 -m benchmarks.gpu_check`` from the repository root (it needs pydantic
and pyyaml besides torch, see the module's docstring; what only the tests need shows up as import errors in the
report).
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
# glibc malloc thresholds (dfgan.runtime.MALLOC_ENV, which imports nothing but the standard library): `dfgan`
# sets them itself too; this keeps pytest and the benchmarks consistent with it.
sys.path.insert(0, str(ROOT))
from dfgan.runtime import MALLOC_ENV  # noqa: E402


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
    """The test suite (CPU only; GPU-only checks skip themselves). First makes sure Debian's PostgreSQL server is
    installed for the two-worker PostgreSQL study test (``.ci/postgres``: apt-get as root; never fails)."""
    _venv(session)
    session.run("bash", str(ROOT / ".ci" / "postgres"), external=True)
    session.run(PY, "-m", "pytest", "-n", "2", "--dist", "loadgroup", *session.posargs, external=True,
                env=MALLOC_ENV)


@nox.session(default=False)
def ablation(session: nox.Session) -> None:
    """Train variants: ``nox -s ablation -- --variant no_magp`` (arguments go to ``dfgan ablate``)."""
    _venv(session)
    session.run(PY, "-m", "dfgan", "ablate", *session.posargs, external=True, env=MALLOC_ENV)


@nox.session(default=False)
def report(session: nox.Session) -> None:
    """Tables and figures of a study: ``nox -s report -- --study claims`` (goes to ``dfgan report``)."""
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
def gpu(session: nox.Session) -> None:
    """The GPU check -> reports/benchmarks_gpu.md and .json (a dry run on the CPU without CUDA): see above."""
    _venv(session)
    session.run(PY, "-m", "benchmarks.gpu_check", *session.posargs, external=True, env=MALLOC_ENV)


@nox.session(default=False)
def lint(session: nox.Session) -> None:
    _venv(session)
    session.run(PY, "-m", "ruff", "check", ".", external=True)
