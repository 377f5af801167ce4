"""A worker SIGKILLed while it holds a delayed rebuild message: the bucket's queued
task is lost until the broker's visibility timeout (300 s, left as it is), yet the
bucket is rebuilt within seconds of the next change, because a queued task holds a
lease, not a flag, and the outbox poll re-sends rebuilds whose lease expired."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks import stats
from tasks.source import SqlSource, SqlWriter
from tasks.web.requests import request_rebuild
from tests.processes import Service, WorkerProcess, wait_for
from tests.support import seed_group, snapshot_ids

pytestmark = pytest.mark.slow

# Long enough that a rebuild asked for right after another waits for it in the worker,
# as a message with an ETA the worker holds (reserved, unacknowledged).
MIN_INTERVAL_SECONDS = 2
# The target: every bucket current within this long of the next change to it.
RECOVERY_SECONDS = 5.0


def deferred(cache: RedisSchedulerCache) -> int:
    return int(cache.stats().get(stats.REBUILDS_DEFERRED, "0"))


def test_a_worker_killed_holding_a_delayed_rebuild_does_not_stall_its_bucket(
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    source: SqlSource,
    db: SqlWriter,
    task_cache: RedisSchedulerCache,
    tmp_path: Path,
) -> None:
    env = {**worker_env, "SCHED_REBUILD_MIN_INTERVAL_SECONDS": str(MIN_INTERVAL_SECONDS)}
    assert "SCHED_VISIBILITY_TIMEOUT_SECONDS" not in env  # the default, 300 s
    doomed = start_worker(env)
    group = seed_group(source, accounts=4)
    bucket = SchedulerBucket(group.id, "openai", "single")
    request_rebuild(bucket)
    ids = wait_for(lambda: snapshot_ids(task_cache, bucket), what="first snapshot")

    # Right after a write: the rebuild waits in the worker for the minimum interval.
    db.update_account(ids[0], status="disabled")
    assert request_rebuild(bucket)
    wait_for(lambda: deferred(task_cache) >= 1, what="the rebuild deferred")
    time.sleep(0.5)  # the retry's message is back in the worker, waiting for its ETA
    doomed.kill()

    start_worker(env)
    beat = Service(
        [sys.executable, "-m", "celery", "-A", "tasks", "beat", "-s", str(tmp_path / "beat")],
        env,
        tmp_path / "beat.log",
    ).start()
    try:
        db.update_account(ids[1], status="disabled")
        changed_at = time.monotonic()
        request_rebuild(bucket)  # as a reader's miss would; the outbox poll asks too
        wait_for(
            lambda: snapshot_ids(task_cache, bucket) == ids[2:],
            timeout=RECOVERY_SECONDS,
            interval=0.1,
            what="the bucket rebuilt after the next change",
        )
        print(f"rebuilt {time.monotonic() - changed_at:.2f} s after the next change")
    finally:
        beat.stop(timeout=5)
