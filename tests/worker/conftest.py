"""Fixtures for the task tests, on top of the suite's workers (``tests/conftest.py``):

- ``worker_env``: the ``SCHED_*`` environment a worker of this test runs with; tests
  may change it before starting a worker.
- ``task_cache``: the cache the workers of this test write to.
- ``events``: task events of the test's ``worker``, as Flower sees them.
- ``gated_env`` / ``gate``: a source whose reads the test holds open.
- ``postgres_url``: a PostgreSQL schema of the test's own, with the source's tables.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any, cast

import pytest
import redis

from cache import Account, SchedulerBucket
from tasks.celery import app
from tasks.settings import Settings
from tasks.source import SqlSource
from tasks.source.schema import init_schema
from tests.processes import DEFAULT_TIMEOUT, READY_TIMEOUT, WorkerProcess, wait_for
from tests.support import TestServers, postgres_schema_or_skip


class EventLog:
    """Task events from the broker (what Flower sees), collected in a thread.

    Start it with a worker running: it is listening once that worker's heartbeat
    arrives (the receiver asks workers for one as it starts).
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventLog:
        self._thread.start()
        wait_for(lambda: self.of("worker-heartbeat"), timeout=READY_TIMEOUT, what="events")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)

    def _run(self) -> None:
        with app.connection_for_read() as connection:
            self._receiver = app.events.Receiver(connection, handlers={"*": self._on_event})
            self._receiver.capture(limit=None, timeout=None, wakeup=True)

    def _on_event(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, event_type: str, name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.get("type") == event_type and (name is None or e.get("name") == name)
            ]


# -- a source whose reads a test holds open ------------------------------------------
GATE_READS = "test-gate:reads"
GATE_GO = "test-gate:go"
# Below the default soft time limit (18 s): a gate nobody opens fails the read, not the
# worker.
GATE_TIMEOUT_SECONDS = 15


class GatedSource:
    """The SQL source, except that each bucket read, once done, waits for the test.

    It reports ``"<pid>:<bucket>:<account count>"`` on ``GATE_READS`` and then waits for
    a token on ``GATE_GO``: the test decides what happens between a rebuild's read and
    its write. Workers load it with ``SCHED_SOURCE_FACTORY=tests.worker.conftest:gated_source``.
    """

    def __init__(self, settings: Settings) -> None:
        self.inner = SqlSource.from_settings(settings)
        self.redis = redis.Redis.from_url(settings.redis_url)

    def accounts_for_bucket(self, bucket: SchedulerBucket, now: datetime) -> list[Account]:
        accounts = self.inner.accounts_for_bucket(bucket, now)
        self.redis.rpush(GATE_READS, f"{os.getpid()}:{bucket}:{len(accounts)}")
        if self.redis.blpop([GATE_GO], timeout=GATE_TIMEOUT_SECONDS) is None:
            raise RuntimeError(f"gate for {bucket} not opened in {GATE_TIMEOUT_SECONDS} s")
        return accounts

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def close(self) -> None:
        self.inner.close()
        self.redis.close()


def gated_source(settings: Settings) -> GatedSource:
    return GatedSource(settings)


class Gate:
    """The test's side of :class:`GatedSource`."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def wait_read(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str, int]:
        """The next finished read, now waiting: (worker child pid, bucket, accounts)."""
        reply = self.client.blpop([GATE_READS], timeout=timeout)
        if reply is None:
            pytest.fail(f"no gated read within {timeout} s")
        raw = cast(bytes, reply[1])
        pid, group, platform, mode, count = raw.decode().split(":")
        return int(pid), f"{group}:{platform}:{mode}", int(count)

    def open(self, times: int = 1) -> None:
        self.client.rpush(GATE_GO, *["go"] * times)


@pytest.fixture
def gated_env(worker_env: dict[str, str]) -> dict[str, str]:
    return {**worker_env, "SCHED_SOURCE_FACTORY": "tests.worker.conftest:gated_source"}


@pytest.fixture
def gate(redis_client: redis.Redis) -> Gate:
    return Gate(redis_client)


@pytest.fixture
def worker_env(process_env: dict[str, str]) -> dict[str, str]:
    return process_env


@pytest.fixture
def events(worker: WorkerProcess) -> Iterator[EventLog]:
    """Events of the test's ``worker`` (started first)."""
    with EventLog() as log:
        yield log


@pytest.fixture
def postgres_url(test_servers: TestServers) -> Iterator[str]:
    with postgres_schema_or_skip(test_servers) as url:
        init_schema(url).dispose()
        yield url


@pytest.fixture
def channel() -> str:
    """A notification channel of the test's own."""
    return f"sched_t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg(test_servers: TestServers, channel: str) -> Iterator[SqlSource]:
    """The SQL source on a PostgreSQL schema of the test's own, notifying ``channel``."""
    with postgres_schema_or_skip(test_servers) as url:
        source = SqlSource(init_schema(url, notify_channel=channel))
        try:
            yield source
        finally:
            source.close()
