"""What the task benchmarks share: private servers, a real worker, and polling."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import runtime
from tasks.celery import app
from tasks.settings import Settings
from tests.support import RedisServer

REPO = Path(__file__).resolve().parents[1]
# Far above any figure the benchmarks expect: a hang ends the run instead of the machine.
DEADLINE_SECONDS = 120.0


def wait_until(condition: Callable[[], Any], what: str, every: float = 0.001) -> Any:
    """Poll ``condition`` until it is truthy and return it; give up after the deadline.

    Polled every millisecond by default: latencies are measured with it.
    """
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark: gave up waiting for {what}")
        time.sleep(every)
    return value


@dataclass(frozen=True)
class BenchServers:
    redis_url: str
    database_url: str
    workdir: Path
    env: dict[str, str]  # for worker subprocesses: only the benchmark's SCHED_* values


@contextmanager
def bench_servers(name: str) -> Iterator[BenchServers]:
    """A private redis-server and a SQLite file in a temporary directory, this process's
    runtime pointed at both; all gone at the end."""
    server = RedisServer().start()
    workdir = Path(tempfile.mkdtemp(prefix=f"sched-{name}-bench-"))
    database_url = f"sqlite:///{workdir / 'source.sqlite3'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHED_")}
    env.update(SCHED_REDIS_URL=server.url, SCHED_DATABASE_URL=database_url)
    runtime.reset(Settings(redis_url=server.url, database_url=database_url))
    try:
        yield BenchServers(server.url, database_url, workdir, env)
    finally:
        runtime.reset()
        server.close()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def running_worker(
    servers: BenchServers, queues: str, *extra_args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``celery -A tasks worker`` (two prefork processes), ready when yielded."""
    name = f"bench-{uuid.uuid4().hex[:8]}@localhost"
    log = servers.workdir / "worker.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tasks",
                "worker",
                "-Q",
                queues,
                "-c",
                "2",
                "-P",
                "prefork",
                "-n",
                name,
                "-l",
                "warning",
                "--without-gossip",
                "--without-mingle",
                *extra_args,
            ],
            cwd=REPO,
            env=servers.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"worker exited at start:\n{log.read_text()[-2000:]}")
            return bool(app.control.ping(destination=[name], timeout=0.5))

        wait_until(ready, "the worker to answer", every=0.1)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
