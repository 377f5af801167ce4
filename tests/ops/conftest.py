"""Fixtures for running the system as a user does: the CLI, workers, Flower, the web app.

- ``sqlite_url``: a fresh SQLite source with the schema, in the test's tmp dir.
- ``ops_env``: the environment of a subprocess of this test (its Redis, its SQLite).
- ``configured``: this process pointed at the same servers (``tasks.runtime.reset``).
- ``source``: a SqlSource on ``sqlite_url``.
- ``start_worker`` / ``worker``: real ``celery -A tasks worker`` subprocesses.
- ``run_cli``: ``sched ARGS...`` as a subprocess: exit status, stdout, stderr.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tasks import runtime
from tasks.app import app
from tasks.db import init_schema
from tasks.settings import Settings
from tasks.sqlsource import SqlSource

REPO = Path(__file__).resolve().parents[2]
QUEUES = "rebuild,outbox,last_used"
# Generous: two shared cores, and other suites may run at the same time.
READY_TIMEOUT = 60.0
T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None], timeout: float = 30.0, what: str = "condition"
) -> T:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (bound and released just now)."""
    return free_port()


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The Settings a process with ``env`` reads, without touching this process's env."""
    fields = Settings.model_fields
    values = {
        key[len("SCHED_"):].lower(): value
        for key, value in env.items()
        if key.startswith("SCHED_") and key[len("SCHED_"):].lower() in fields
    }
    return Settings.model_validate(values)


def child_env(**sched: str) -> dict[str, str]:
    """This environment without any SCHED_* of the caller's, plus ``sched``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="160", **sched)
    return env


class Service:
    """A subprocess of a test, in its own session, logging to a file; stopped for sure."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path,
                 cwd: Path = REPO) -> None:
        self.argv = argv
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)

    def log(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"


class Worker(Service):
    def __init__(self, env: Mapping[str, str], log_dir: Path, concurrency: int = 2) -> None:
        self.name = f"ops-{uuid.uuid4().hex[:8]}@localhost"
        argv = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker", "-Q", QUEUES,
            "-c", str(concurrency), "-n", self.name, "-l", "info",
            "--without-gossip", "--without-mingle",
        ]
        super().__init__(argv, env, log_dir / f"{self.name.split('@')[0]}.log")

    def start(self) -> Worker:
        super().start()
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if not self.alive():
                raise RuntimeError(f"worker {self.name} exited at start:\n{self.log()}")
            with suppress(Exception):  # the broker may not answer yet
                if app.control.ping(destination=[self.name], timeout=0.5):
                    return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"worker {self.name} not ready:\n{self.log()}")
            time.sleep(0.2)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    init_schema(url).dispose()
    return url


@pytest.fixture
def ops_env(redis_url: str, redis_client: Any, sqlite_url: str) -> dict[str, str]:
    """A subprocess's environment: the test's Redis (flushed) and SQLite."""
    return child_env(SCHED_REDIS_URL=redis_url, SCHED_DATABASE_URL=sqlite_url)


@pytest.fixture
def configured(ops_env: dict[str, str]) -> Iterator[Settings]:
    settings = settings_from_env(ops_env)
    runtime.reset(settings)
    try:
        yield settings
    finally:
        runtime.reset()


@pytest.fixture
def source(configured: Settings) -> Iterator[SqlSource]:
    store = SqlSource(
        configured.database_url,
        mixed_platforms=configured.mixed_platforms,
        donor_platform=configured.mixed_donor_platform,
    )
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def start_worker(
    ops_env: dict[str, str], configured: Settings, tmp_path: Path
) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(env: Mapping[str, str] | None = None, **options: Any) -> Worker:
        worker = Worker(env or ops_env, tmp_path, **options)
        started.append(worker)
        return worker.start()

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()


@pytest.fixture
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker()


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
            cwd=tmp_path, env=dict(env or ops_env), capture_output=True, timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())

    return run
