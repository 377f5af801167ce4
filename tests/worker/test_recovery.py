"""Recovery under a real worker: a rebuilder killed while holding its lock, unknown
platforms, and bad input that must not flood the logs."""

from __future__ import annotations

import time
from typing import Any

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.buckets import UnknownPlatform
from tasks.celery import app
from tasks.source import SqlSource, SqlWriter
from tasks.web.requests import request_rebuild
from tests.processes import WorkerProcess, wait_for
from tests.support import seed_group, snapshot_ids
from tests.worker.conftest import EventLog, Gate

pytestmark = pytest.mark.slow

# Short, in the order celeryconfig documents; the redelivery of a dead worker's message
# is kept far away, so only the lock's expiry can bring the bucket back in time.
LOCK_TTL = 6
KILLED_HOLDER_TIMES = {
    "SCHED_LOCK_TTL_SECONDS": str(LOCK_TTL),
    "SCHED_REBUILD_TIME_LIMIT_SECONDS": "5",
    "SCHED_RETRY_BACKOFF_MAX_SECONDS": "1",
    "SCHED_VISIBILITY_TIMEOUT_SECONDS": "120",
    "SCHED_TASK_MAX_RETRIES": "3",
}


def test_a_change_to_a_bucket_whose_rebuilder_died_lands_within_the_lock_ttl(
    gated_env: dict[str, str],
    worker_env: dict[str, str],
    start_worker: Any,
    gate: Gate,
    source: SqlSource,
    db: SqlWriter,
    task_cache: RedisSchedulerCache,
) -> None:
    holder: WorkerProcess = start_worker({**gated_env, **KILLED_HOLDER_TIMES})
    # Up and consuming something else: it takes over the rebuilds once the holder is dead.
    other: WorkerProcess = start_worker({**worker_env, **KILLED_HOLDER_TIMES}, queues="last_used")
    group = seed_group(source)
    bucket = SchedulerBucket(group.id, "openai", "single")
    request_rebuild(bucket)
    gate.wait_read()
    gate.open()
    ids = wait_for(lambda: snapshot_ids(task_cache, bucket), what="first snapshot")

    request_rebuild(bucket)
    gate.wait_read()  # the holder has read and holds the bucket's lock
    holder.kill()
    killed_at = time.monotonic()
    db.update_account(ids[0], status="disabled")
    assert request_rebuild(bucket) is True  # the dead run had begun: a new task goes out
    app.control.add_consumer("rebuild", destination=[other.name], reply=True, timeout=5)

    wait_for(
        lambda: snapshot_ids(task_cache, bucket) == ids[1:],
        timeout=LOCK_TTL + 15,
        interval=0.1,
        what="the change in the snapshot",
    )
    assert time.monotonic() - killed_at < LOCK_TTL + 5


def test_unknown_platforms_are_refused_and_nothing_is_registered(
    events: EventLog, task_cache: RedisSchedulerCache
) -> None:
    with pytest.raises(UnknownPlatform, match=r"'nosuchplat'.*configured are anthropic"):
        request_rebuild("0:nosuchplat:single")
    sent = app.send_task("tasks.rebuild_bucket", args=["0:nosuchplat:single"]).id

    failed = wait_for(
        lambda: [e for e in events.of("task-failed") if e["uuid"] == sent], what="failure"
    )
    assert "unknown platform 'nosuchplat'" in failed[0]["exception"]
    assert "openai" in failed[0]["exception"]
    assert not [e for e in events.of("task-retried") if e["uuid"] == sent]
    assert not task_cache.client.keys("*nosuchplat*")
    assert task_cache.list_buckets() == []


def test_a_huge_bad_argument_is_logged_bounded(
    worker: WorkerProcess, events: EventLog, task_cache: RedisSchedulerCache
) -> None:
    huge = "x" * 2_000_000
    before = worker.log_path.stat().st_size
    sent = [
        app.send_task("tasks.rebuild_bucket", args=[huge]).id,
        app.send_task("tasks.rebuild_bucket", args=[f"1:{huge}:single"]).id,
        app.send_task("tasks.update_last_used", args=[{huge: 1.0}]).id,
        app.send_task("tasks.update_last_used", args=[{"1": huge}]).id,
        app.send_task("tasks.refresh_buckets", kwargs={"force": huge}).id,
    ]

    def failures() -> list[dict[str, Any]] | None:
        failed = [e for e in events.of("task-failed") if e["uuid"] in sent]
        return failed if len(failed) == len(sent) else None

    failed = wait_for(failures, what="every bad task to fail")
    for event in failed:
        assert len(event["exception"]) < 1_000, event["exception"][:300]
        assert "2,000,00" in event["exception"]  # the size of what was cut away
    time.sleep(0.5)  # the worker writes its log lines around the event
    grown = worker.log_path.stat().st_size - before
    assert grown < 50_000, worker.log_tail(2_000)
