"""Fixtures for running the system as a user does: the CLI, workers, Flower, the web app.

- ``ops_env``: the environment of a subprocess of this test (its Redis, its SQLite).
- ``run_cli``: ``sched ARGS...`` as a subprocess: exit status, stdout, stderr.

The workers, the source and ``configured`` are the suite's (``tests/conftest.py``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest


@pytest.fixture
def ops_env(process_env: dict[str, str]) -> dict[str, str]:
    return process_env


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(ops_env: dict[str, str], tmp_path: Path) -> Callable[..., CliResult]:
    """``run_cli(*args, env=None, timeout=60)``: ``python -m tasks ARGS`` in a subprocess."""

    def run(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60) -> CliResult:
        done = subprocess.run(
            [sys.executable, "-m", "tasks", *args],
            cwd=tmp_path,
            env=dict(env or ops_env),
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())

    return run
