"""The periodic refresh: safe to run twice, under two beats, and it tidies the registry."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.celery import app
from tasks.source import SqlSource, SqlWriter
from tests.processes import Service, wait_for
from tests.support import seed_group

pytestmark = pytest.mark.slow


def counter(cache: RedisSchedulerCache, name: str) -> int:
    return int(cache.stats().get(name, 0))


def settled(cache: RedisSchedulerCache, buckets: list[SchedulerBucket]) -> bool:
    """Every bucket has a snapshot and no rebuild request is waiting."""
    for bucket in buckets:
        state = cache.client.hgetall(cache.keys.rebuild_state(bucket))
        if b"queued" in state or state.get(b"done") != state.get(b"req"):
            return False
    return True


def test_two_refreshes_at_once_do_the_work_once_and_retire_gone_buckets(
    worker: Any, source: SqlSource, task_cache: RedisSchedulerCache, db: SqlWriter
) -> None:
    kept = seed_group(source)
    gone = seed_group(source)
    gone_bucket = SchedulerBucket(gone.id, "openai", "single")
    task_cache.set_snapshot(gone_bucket, [])  # registered, as an earlier read would have
    db.update_group(gone.id, status="disabled")
    # A request whose task was lost: the flag says queued, nothing will ever run it.
    lost = SchedulerBucket(0, "openai", "single")
    task_cache.request_rebuild(lost)

    first = app.send_task("tasks.refresh_buckets")
    second = app.send_task("tasks.refresh_buckets")
    assert first.id != second.id

    defaults = runtime.default_buckets(source)
    assert SchedulerBucket(kept.id, "openai", "single") in defaults
    assert gone_bucket not in defaults
    wait_for(lambda: counter(task_cache, "refresh_runs") == 1, what="one refresh run")
    wait_for(lambda: counter(task_cache, "refresh_skipped") == 1, what="the other skipped")
    wait_for(lambda: settled(task_cache, defaults), what="every default bucket rebuilt")
    wait_for(
        lambda: counter(task_cache, "rebuilds") == len(defaults), what="one rebuild per bucket"
    )
    assert all(task_cache.bucket_info(b).active_version for b in defaults)
    assert gone_bucket not in task_cache.list_buckets()
    assert task_cache.get_snapshot(gone_bucket) is None
    assert counter(task_cache, "rebuild_requests_requeued") == 1  # the lost one


def beat(env: dict[str, str], tmp: Path, name: str) -> Service:
    """A ``celery -A tasks beat`` subprocess with its own schedule file."""
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks",
        "beat",
        "-l",
        "info",
        "-s",
        str(tmp / f"{name}-schedule"),
    ]
    return Service(argv, env, tmp / f"{name}.log").start()


@pytest.fixture
def beats(worker_env: dict[str, str], tmp_path: Path) -> Iterator[list[Service]]:
    env = {
        **worker_env,
        "SCHED_REFRESH_INTERVAL_SECONDS": "1",
        # Only the refresh is under test here.
        "SCHED_OUTBOX_INTERVAL_SECONDS": "3600",
        "SCHED_LAST_USED_DB_FLUSH_SECONDS": "3600",
    }
    started = [beat(env, tmp_path, "beat-a"), beat(env, tmp_path, "beat-b")]
    try:
        yield started
    finally:
        for each in started:
            each.stop(timeout=10)


def test_two_beats_do_not_double_the_refresh(
    worker_env: dict[str, str],
    start_worker: Any,
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    beats: list[Service],
) -> None:
    start_worker({**worker_env, "SCHED_REFRESH_INTERVAL_SECONDS": "1"})
    seed_group(source)

    def ticks() -> int:
        return counter(task_cache, "refresh_runs") + counter(task_cache, "refresh_skipped")

    wait_for(lambda: counter(task_cache, "refresh_runs") >= 1, timeout=60, what="a refresh")
    started = time.monotonic()
    runs_before = counter(task_cache, "refresh_runs")
    wait_for(lambda: ticks() >= 12, timeout=60, what="ticks of both beats")
    elapsed = time.monotonic() - started
    runs = counter(task_cache, "refresh_runs") - runs_before
    skipped = counter(task_cache, "refresh_skipped")

    assert all(each.alive() for each in beats), "a beat died"
    assert skipped >= 2, "both beats tick, one of each pair of ticks is skipped"
    # The refresh lock holds for 0.9 of the interval: at most one run per 0.9 s.
    assert runs <= elapsed / 0.9 + 1, (runs, skipped, elapsed)
