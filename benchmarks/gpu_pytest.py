"""A pytest plugin for the GPU check's test run (``-p benchmarks.gpu_pytest``): outcome counts, the first
failures and how many tests allocated CUDA memory, written to ``$DFGAN_GPU_CHECK_TESTS_OUT`` after every test,
so that a run cut at its time cap still says how far it got. Works with and without pytest-xdist (only the
controller writes; workers attach each test's CUDA peak to its report)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ENV = "DFGAN_GPU_CHECK_TESTS_OUT"
MAX_LISTED = 15

_state: dict = {"counts": {}, "failures": [], "collection_errors": [], "cuda_tests": 0, "tests": 0}
_config: list = []
_t0 = time.monotonic()


def pytest_configure(config):
    _config.append(config)


def _is_worker() -> bool:
    return bool(_config) and hasattr(_config[0], "workerinput")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    torch = sys.modules.get("torch")
    if rep.when == "call" and torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        rep.user_properties.append(("cuda_peak_bytes", int(torch.cuda.max_memory_allocated())))
        torch.cuda.reset_peak_memory_stats()


def _message(rep) -> str:
    text = getattr(rep, "longreprtext", "") or ""
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    errs = [x for x in lines if x.startswith("E ")]
    return ((errs[-1][2:] if errs else lines[-1]) if lines else "")[:240]


def _write() -> None:
    path = os.environ.get(ENV)
    if not path or _is_worker():
        return
    data = {"info": {**_state, "seconds": time.monotonic() - _t0}, "rows": []}
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _count(outcome: str) -> None:
    _state["counts"][outcome] = _state["counts"].get(outcome, 0) + 1


def pytest_runtest_logreport(report):
    if _is_worker():
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        outcome = "error" if report.when == "setup" and report.failed else report.outcome
        _count(outcome)
        _state["tests"] += 1
        if dict(report.user_properties).get("cuda_peak_bytes", 0) > 0:
            _state["cuda_tests"] += 1
    elif report.when == "teardown" and report.failed:
        _count("error")
    if report.failed and len(_state["failures"]) < MAX_LISTED:
        _state["failures"].append({"test": report.nodeid, "when": report.when, "message": _message(report)})
    _write()


def pytest_collectreport(report):
    seen = {e["module"] for e in _state["collection_errors"]}
    if report.failed and not _is_worker() and report.nodeid not in seen:
        _state["collection_errors"].append({"module": report.nodeid, "message": _message(report)})
        _write()


def pytest_sessionfinish(session, exitstatus):
    _state["exit_status"] = int(exitstatus)
    _write()
