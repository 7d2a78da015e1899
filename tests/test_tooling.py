"""The linters run with the tests: ruff (lint and format) on the code, mypy on the package (pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = ["segexp", "hydra_plugins", "scripts", "tests"]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def _ruff() -> str:
    found = shutil.which("ruff")
    if found is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    return found


def test_ruff_lint_is_clean() -> None:
    proc = _run([_ruff(), "check", "--no-cache", *CODE])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_is_clean() -> None:
    proc = _run([_ruff(), "format", "--check", "--no-cache", *CODE])
    assert proc.returncode == 0, f"run `ruff format {' '.join(CODE)}`:\n{proc.stdout}{proc.stderr}"


def test_mypy_is_clean() -> None:
    proc = _run([sys.executable, "-m", "mypy", "--no-incremental"])  # files and options: pyproject.toml
    assert "No module named mypy" not in proc.stderr, "mypy is not installed: pip install -e '.[test]'"
    assert proc.returncode == 0, proc.stdout + proc.stderr
