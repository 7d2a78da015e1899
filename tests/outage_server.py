"""A plain ``mlflow server`` (SQLite backend, proxied artifacts) that a test can stop and restart on one port.

The PostgreSQL-backed session server (tests/servers.py) is shared by other tests and must not go
away; this one belongs to the tests that simulate a tracking-server outage.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from .servers import free_port

START_TIMEOUT_S = 180


class RestartableServer:
    """``mlflow server`` on ``127.0.0.1:<port>`` whose store (``db.sqlite``, ``artifacts/``) lives in ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def start(self) -> None:
        """Start the server (same port, same store) and wait until ``/health`` answers."""
        if self.process is not None and self.process.poll() is None:
            return
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        self.starts += 1
        log = open(self.base / f"server-{self.starts}.log", "w")
        self.process = subprocess.Popen(
            [
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.base / 'db.sqlite'}",
                "--artifacts-destination",
                str(self.base / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.healthy():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.base / f"server-{self.starts}.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server did not come up on {self.uri}:\n{tail}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server and its workers (its own process group); the port is free afterwards."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)
        try:  # workers left behind in the group
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process = None
        deadline = time.monotonic() + 30
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.2)
