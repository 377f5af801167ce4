"""Rebuilds through a real worker: changes reach the snapshot, requests coalesce."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.rebuild import request_rebuild
from tasks.sqlsource import SqlSource
from tests.processes import wait_for

pytestmark = pytest.mark.slow


def seed_group(source: SqlSource, accounts: int = 3, platform: str = "openai") -> Any:
    group = source.create_group("team", platform)
    for n in range(accounts):
        source.create_account(
            name=f"acc-{n}", platform=platform, type="apikey", priority=n,
            group_ids={group.id: 1},
        )
    return group


def snapshot_ids(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> list[int] | None:
    accounts = cache.get_snapshot(bucket)
    return None if accounts is None else [a.id for a in accounts]


def change_reaches_snapshot(source: SqlSource, cache: RedisSchedulerCache) -> None:
    """The end-to-end path: source helpers -> request_rebuild -> worker -> snapshot."""
    group = seed_group(source)
    bucket = SchedulerBucket(group.id, "openai", "single")

    assert request_rebuild(bucket) is True
    first = wait_for(lambda: snapshot_ids(cache, bucket), what="first snapshot")
    assert len(first) == 3

    source.update_account(first[0], status="disabled")
    request_rebuild(str(bucket))
    wait_for(lambda: snapshot_ids(cache, bucket) == first[1:], what="disabled account gone")
    info = cache.bucket_info(bucket)
    assert info.account_count == 2
    assert info.rebuild_ms is not None
    wait_for(lambda: int(cache.stats().get("rebuilds", 0)) >= 2, what="rebuilds counted")
    assert cache.stats()["last_rebuild_bucket"] == str(bucket)


def test_a_change_written_through_the_helpers_reaches_the_snapshot(
    worker: Any, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    change_reaches_snapshot(source, task_cache)


def test_a_burst_of_1000_requests_costs_at_most_two_rebuilds(
    worker_env: dict[str, str],
    start_worker: Any,
    source: SqlSource,
    task_cache: RedisSchedulerCache,
) -> None:
    # A wide spacing so that even a slow burst on a busy machine fits in one interval;
    # the first request still starts at once.
    interval = 3.0
    start_worker({**worker_env, "SCHED_REBUILD_MIN_INTERVAL_SECONDS": str(interval)})
    group = seed_group(source, accounts=20)
    bucket = SchedulerBucket(group.id, "openai", "single")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        sent = sum(pool.map(lambda _: request_rebuild(bucket), range(1000)))
    burst = time.monotonic() - started

    wait_for(lambda: snapshot_ids(task_cache, bucket), what="snapshot")
    # Every request made is covered by a finished rebuild: nothing is queued any more.
    wait_for(lambda: _idle(task_cache, bucket), what="rebuilds to settle")
    rebuilds = int(task_cache.stats().get("rebuilds", 0))
    allowed = 1 + math.ceil(burst / interval)
    assert 1 <= rebuilds <= max(2, allowed), (rebuilds, burst)
    assert sent <= rebuilds + 1


def _idle(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> bool:
    """Whether every rebuild request of ``bucket`` has been served."""
    state = cache.client.hgetall(cache.keys.rebuild_state(bucket))
    return b"queued" not in state and state.get(b"done") == state.get(b"req")
