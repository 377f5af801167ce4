"""Real Celery workers for the task tests.

Fixtures, for every test module of this folder:

- ``sqlite_url``: a fresh SQLite source database with the schema, in the test's tmp dir.
- ``source``: a :class:`SqlSource` on it.
- ``worker_env``: the ``SCHED_*`` environment a worker of this test runs with (the
  test's Redis as cache and broker, the SQLite source). Tests may change it before
  starting a worker.
- ``configured``: this test process pointed at the same Redis, broker and source
  (``tasks.runtime``), so helpers like ``request_rebuild`` talk to the test's worker.
- ``start_worker``: starts ``celery -A tasks worker`` subprocesses on demand and stops
  them at the end of the test; ``worker``: one such worker, started.
- ``wait_for``: polls a condition with a generous deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import redis

from cache import Account, RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.app import app
from tasks.db import init_schema
from tasks.settings import Settings
from tasks.sqlsource import SqlSource

REPO = Path(__file__).resolve().parents[2]
QUEUES = "rebuild,outbox,last_used"
# Generous: two shared cores, and other suites may run at the same time.
READY_TIMEOUT = 60.0
DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None],
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The Settings a process with ``env`` reads, built without touching os.environ."""
    prefix = "SCHED_"
    fields = Settings.model_fields
    values: dict[str, Any] = {}
    for key, value in env.items():
        name = key[len(prefix):].lower() if key.startswith(prefix) else None
        if name in fields:
            values[name] = value
    return Settings(**values)


class WorkerProcess:
    """One ``celery -A tasks worker`` subprocess of a test, with its log file."""

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        *,
        queues: str = QUEUES,
        concurrency: int = 2,
        pool: str = "prefork",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.name = f"test-{uuid.uuid4().hex[:10]}@localhost"
        self.env = dict(env)
        self.log_path = log_dir / f"{self.name.split('@')[0]}.log"
        self.args = [
            sys.executable, "-m", "celery", "-A", "tasks", "worker",
            "-Q", queues, "-c", str(concurrency), "-P", pool, "-n", self.name,
            "-l", "info", "--without-gossip", "--without-mingle", *extra_args,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "worker not started"
        return self.process.pid

    def start(self, timeout: float = READY_TIMEOUT) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Until the worker answers a ping through the broker."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited at start:\n{self.log_tail()}")
            try:
                if app.control.ping(destination=[self.name], timeout=0.5):
                    return
            except Exception:  # the broker may not answer yet either
                time.sleep(0.2)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"worker {self.name} not ready in {timeout} s:\n{self.log_tail()}"
                )

    def children(self) -> list[int]:
        """The pool processes (prefork children) of the worker."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(pid) for pid in path.read_text().split()]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        """SIGKILL the worker and its pool at once, as a crash would."""
        if self.process is None:
            return
        # The whole group: pool children outlive a main process that died first.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """Warm shutdown; SIGKILL for whatever is left after ``timeout``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=timeout)
        # Pool children of a worker that died hard would otherwise outlive the test.
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout=10)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"


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
                e for e in self.events
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
        self.inner = SqlSource(
            settings.database_url,
            mixed_platforms=settings.mixed_platforms,
            donor_platform=settings.mixed_donor_platform,
        )
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
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    init_schema(url).dispose()
    return url


@pytest.fixture
def worker_env(redis_url: str, redis_client: Any, sqlite_url: str) -> dict[str, str]:
    """A worker's environment: no SCHED_* of ours leaks in, the test's servers do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(
        SCHED_REDIS_URL=redis_url,
        SCHED_DATABASE_URL=sqlite_url,
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def configured(worker_env: dict[str, str]) -> Iterator[Settings]:
    """This process's runtime pointed at the test's servers (as its workers are)."""
    settings = settings_from_env(worker_env)
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
def task_cache(configured: Settings) -> RedisSchedulerCache:
    """The cache the workers of this test write to."""
    return runtime.get_cache()


@pytest.fixture
def start_worker(
    worker_env: dict[str, str], configured: Settings, tmp_path: Path
) -> Iterator[Callable[..., WorkerProcess]]:
    """``start_worker(env=None, **options)``: a started worker, killed at the end."""
    started: list[WorkerProcess] = []

    def start(env: Mapping[str, str] | None = None, **options: Any) -> WorkerProcess:
        worker = WorkerProcess(env or worker_env, tmp_path, **options)
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


@pytest.fixture
def events(worker: WorkerProcess) -> Iterator[EventLog]:
    """Events of the test's ``worker`` (started first)."""
    with EventLog() as log:
        yield log
