"""Fixtures for running the system as a user does: the CLI, workers, Flower, the web app.

- ``ops_env``: the environment of a subprocess of this test (its Redis, its SQLite).
- ``run_cli``: ``sched ARGS...`` as a subprocess: exit status, stdout, stderr.
- ``rabbitmq_url``: a RabbitMQ vhost of the test's own (skipped without
  SCHED_TEST_AMQP_URL), so no other run's worker or queue is in the figures.

The workers, the source and ``configured`` are the suite's (``tests/conftest.py``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import TestServers, rabbitmq_vhost

NO_AMQP = "needs SCHED_TEST_AMQP_URL (e.g. amqp://guest:guest@127.0.0.1:5672//)"


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


@pytest.fixture
def rabbitmq_url(test_servers: TestServers) -> Iterator[str]:
    """A vhost of this test's own on the test RabbitMQ; skipped when there is no server,
    or no way to make one (queue lengths must be this test's alone)."""
    if not test_servers.amqp_url:
        pytest.skip(NO_AMQP)
    with rabbitmq_vhost(test_servers.amqp_url) as url:
        if url is None:
            pytest.skip("needs rabbitmqctl and a local SCHED_TEST_AMQP_URL for a vhost of its own")
        yield url
