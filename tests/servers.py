"""Services for tests: an MLflow tracking server with a PostgreSQL backend (``scripts/mlflow_server.sh``).

Import the fixture in ``tests/conftest.py`` to make it available to every test module::

    from .servers import mlflow_server  # noqa: F401

Without PostgreSQL (or psycopg2) the tests that use it are skipped, unless the environment
variable ``SEGEXP_REQUIRE_SERVER`` is set (CI): then they fail.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from segexp.config.schema import REPO_DIR

SERVER_SCRIPT = REPO_DIR / "scripts" / "mlflow_server.sh"
REQUIRE_ENV = "SEGEXP_REQUIRE_SERVER"
START_TIMEOUT_S = 300
#: The environment the session's server was started with (its ports and folders), once it runs.
STARTED: dict[str, str] = {}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def skip_or_fail(reason: str) -> None:
    """Skip, or fail when ``SEGEXP_REQUIRE_SERVER`` says the server must be tested (CI)."""
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(f"{reason} ({REQUIRE_ENV} is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(f"{reason} (set {REQUIRE_ENV}=1 to make this an error)")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} not readable)"


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    """Start PostgreSQL + ``mlflow server`` on free loopback ports in a temporary folder; yield the URI.

    The folder comes from :func:`tempfile.mkdtemp`, not ``tmp_path_factory``: run as root, PostgreSQL
    runs as the ``postgres`` user, which must be able to enter every folder above its data folder,
    and pytest's base folder (``/tmp/pytest-of-root``) is private to root.
    """
    if not SERVER_SCRIPT.is_file():
        pytest.fail(f"{SERVER_SCRIPT} is missing")
    check = subprocess.run(["bash", str(SERVER_SCRIPT), "check"], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        skip_or_fail("MLflow server prerequisites missing: " + " ".join(check.stderr.split()))

    base = Path(tempfile.mkdtemp(prefix="segexp-mlflow-server-"))
    base.chmod(0o755)
    pg_port, mlflow_port = free_port(), free_port()
    while mlflow_port == pg_port:
        mlflow_port = free_port()
    env = {
        **os.environ,
        "SEGEXP_PG_DATA": str(base / "postgres"),
        "SEGEXP_PG_PORT": str(pg_port),
        "SEGEXP_MLFLOW_PORT": str(mlflow_port),
        "SEGEXP_MLFLOW_ARTIFACTS": str(base / "artifacts"),
        "SEGEXP_MLFLOW_STATE": str(base / "state"),
        "SEGEXP_MLFLOW_WORKERS": "2",
        "SEGEXP_SERVER_TIMEOUT": str(START_TIMEOUT_S - 60),
    }
    env.pop("MLFLOW_TRACKING_URI", None)

    def script(command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(SERVER_SCRIPT), command], env=env, capture_output=True, text=True, timeout=START_TIMEOUT_S
        )

    try:
        started = script("start")
        if started.returncode != 0:
            pytest.fail(
                f"scripts/mlflow_server.sh start failed ({started.returncode}):\n{started.stdout}{started.stderr}\n"
                f"--- PostgreSQL log ---\n{_tail(base / 'postgres' / 'server.log')}\n"
                f"--- MLflow log ---\n{_tail(base / 'state' / 'mlflow.log')}",
                pytrace=False,
            )
        STARTED.update(env)
        yield f"http://127.0.0.1:{mlflow_port}"
    finally:
        STARTED.clear()
        stopped = script("stop")
        if stopped.returncode == 0:
            shutil.rmtree(base, ignore_errors=True)
        else:  # keep the folder (and its logs) to look at
            print(f"scripts/mlflow_server.sh stop failed, files kept in {base}:\n{stopped.stdout}{stopped.stderr}")


@pytest.fixture(scope="session")
def optuna_postgres(mlflow_server: str) -> str:
    """The Optuna storage on the session server's PostgreSQL: the database ``optuna`` that the script creates
    beside MLflow's (what ``tracking=server`` uses by default, there on port 5433)."""
    return f"postgresql+psycopg2://mlflow@127.0.0.1:{STARTED['SEGEXP_PG_PORT']}/optuna"
