"""Services the end-to-end tests start on 127.0.0.1 and stop: an `mlflow server` (any backend store)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

SERVER_START_S = 180  # bounded wait for `mlflow server` (it migrates a fresh database first: ~20 s here)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """End the process and its children (it was started in its own session)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with backend ``store`` and artifacts under ``folder``; ``kill()`` it and
    ``start()`` it again on the same port and store."""

    def __init__(self, folder: Path, store: str):
        self.folder, self.store, self.port, self.proc = Path(folder), store, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.folder / "mlflow-server.log"

    def start(self) -> str:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.store,
                 "--artifacts-destination", str(self.folder / "artifacts"), "--host", "127.0.0.1",
                 "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder)
        deadline = time.time() + SERVER_START_S
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"mlflow server not ready after {SERVER_START_S}s:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@contextlib.contextmanager
def mlflow_server_at(folder: Path, store: str):
    """A running `mlflow server` with backend ``store``: yields its URL, stops it after."""
    server = MlflowServer(folder, store)
    try:
        yield server.start()
    finally:
        server.stop()
