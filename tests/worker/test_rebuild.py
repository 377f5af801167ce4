"""Rebuilds through a real worker: changes reach the snapshot, requests coalesce."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.source import SqlSource
from tasks.web.requests import request_rebuild
from tests.processes import wait_for
from tests.support import seed_group, snapshot_ids
from tests.worker.helpers import change_reaches_snapshot

pytestmark = pytest.mark.slow


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


def test_a_rebuild_of_an_unknown_group_registers_nothing(
    worker: Any, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    """A direct request for a group the source does not have (a typo, a probe) is
    served by the worker without writing a snapshot or registering the bucket, which
    every refresh would rebuild from then on; a known group's empty bucket is written."""
    known = seed_group(source, accounts=0)
    unknown = SchedulerBucket(known.id + 1000, "openai", "single")
    empty = SchedulerBucket(known.id, "openai", "single")
    assert request_rebuild(unknown)
    assert request_rebuild(empty)
    wait_for(lambda: task_cache.bucket_info(empty).active_version, what="the known group's bucket")
    wait_for(lambda: _idle(task_cache, unknown), what="the unknown group's rebuild to end")
    assert unknown not in task_cache.list_buckets()
    assert snapshot_ids(task_cache, unknown) is None
    assert not task_cache.client.exists(task_cache.keys.meta(unknown))
