"""Shared fixtures: one Redis for the whole run, flushed for every test.

For tests that run the system's processes:

- ``sqlite_url``: a fresh SQLite source database with the schema, in the test's tmp dir.
- ``process_env``: the environment of a subprocess of this test: no SCHED_* of ours
  leaks in, the test's servers do (its Redis as cache and broker, the SQLite source).
  Tests may change it before starting a worker.
- ``configured``: this test process pointed at the same Redis, broker and source
  (``tasks.runtime``), so calls like ``request_rebuild`` reach the test's worker.
- ``source``: a :class:`SqlSource` on it.
- ``start_worker``: starts ``celery -A tasks worker`` subprocesses on demand and stops
  them at the end of the test; ``worker``: one such worker, started.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from _pytest.terminal import TerminalReporter

from cache import RedisSchedulerCache
from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.source.schema import init_schema
from tests.processes import WorkerProcess, child_env, settings_from_env
from tests.support import RedisServer, TestServers, sqlite_url_in


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """SCHED_REDIS_URL (set by `make test` to a private server), else a private server."""
    configured = Settings().redis_url if _env_has_redis_url() else None
    if configured:
        yield configured
        return
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.close()


def _env_has_redis_url() -> bool:
    # Settings has a default URL; only an explicit one counts as "given".
    return "redis_url" in Settings().model_fields_set


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=10)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def cache(redis_client: redis.Redis) -> RedisSchedulerCache:
    return RedisSchedulerCache(redis_client)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, free to stop and restart."""
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def test_servers() -> TestServers:
    return TestServers()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = sqlite_url_in(tmp_path)
    init_schema(url).dispose()
    return url


@pytest.fixture
def process_env(redis_url: str, redis_client: redis.Redis, sqlite_url: str) -> dict[str, str]:
    """A subprocess's environment: the test's Redis (flushed) and SQLite, without the
    SQLite outbox watcher: a test's own writes start no poll unless it asks for one
    (tests/worker/test_watcher.py turns the watcher on)."""
    return child_env(
        SCHED_REDIS_URL=redis_url, SCHED_DATABASE_URL=sqlite_url, SCHED_OUTBOX_WATCH_SECONDS="0"
    )


@pytest.fixture
def configured(process_env: dict[str, str]) -> Iterator[Settings]:
    """This process's runtime pointed at the test's servers (as its workers are)."""
    settings = settings_from_env(process_env)
    runtime.reset(settings)
    try:
        yield settings
    finally:
        _leave_nothing_behind()
        runtime.reset()


def _leave_nothing_behind() -> None:
    """What a test left in this process's web state goes with it: the default batcher's
    touches (sent to the test's own Redis) and the accounts it marked unschedulable."""
    from tasks.web import last_used, marks

    batcher = last_used._default
    if batcher is not None:
        with contextlib.suppress(Exception):
            batcher.flush()
    marks.forget_marks()


@pytest.fixture
def source(configured: Settings) -> Iterator[SqlSource]:
    store = SqlSource.from_settings(configured)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def task_cache(configured: Settings) -> RedisSchedulerCache:
    """The cache the workers of this test write to."""
    return runtime.get_cache()


@pytest.fixture
def db(source: SqlSource) -> SqlWriter:
    """Changes to the source database, each with its outbox event."""
    return SqlWriter(source)


@pytest.fixture
def start_worker(
    process_env: dict[str, str], configured: Settings, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(env=None, **options)``: a started worker, killed at the end."""
    started: list[WorkerProcess] = []

    def start(env: Mapping[str, str] | None = None, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(env or process_env, tmp_path, **options)
        started.append(worker)
        return worker.start()

    try:
        yield start
    finally:
        # The test is over: a graceful shutdown would only add two seconds per worker.
        for worker in started:
            worker.kill()


@pytest.fixture
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    return start_worker()


def pytest_terminal_summary(terminalreporter: TerminalReporter) -> None:
    """One line per reason for skipped tests (a missing server skips dozens), in place
    of a line per test: pyproject's ``-r`` leaves skips out of the short summary."""
    reasons: Counter[str] = Counter()
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(report, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reasons[reason.removeprefix("Skipped: ")] += 1
    for reason, count in sorted(reasons.items()):
        terminalreporter.write_line(f"skipped {count} test(s): {reason}", yellow=True)
