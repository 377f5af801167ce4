"""Helpers the worker tests share: seeded groups, snapshot ids, a slow source for workers."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import redis

from cache import Account, RedisSchedulerCache, SchedulerBucket
from tasks.settings import Settings
from tasks.source import OutboxEvent, SqlSource, SqlWriter
from tasks.web.requests import request_rebuild
from tests.processes import wait_for
from tests.support import seed_group, snapshot_ids

# A worker loads this with SCHED_SOURCE_FACTORY.
SLOW_SOURCE = f"{__name__}:slow_source"


def change_reaches_snapshot(source: SqlSource, cache: RedisSchedulerCache) -> None:
    """The end-to-end path: source helpers -> request_rebuild -> worker -> snapshot."""
    group = seed_group(source)
    bucket = SchedulerBucket(group.id, "openai", "single")

    # False when it coalesced: a worker woken on commit (PostgreSQL) may already have
    # queued this bucket's rebuild for the accounts' events.
    request_rebuild(bucket)

    # A worker that wakes on commit may build the bucket while the accounts are still
    # being created, and put the others in as their events arrive: wait for all three.
    def all_three() -> list[int] | None:
        ids = snapshot_ids(cache, bucket)
        return ids if ids is not None and len(ids) == 3 else None

    first = wait_for(all_three, what="first snapshot with the three accounts")

    SqlWriter(source).update_account(first[0], status="disabled")
    request_rebuild(str(bucket))
    wait_for(lambda: snapshot_ids(cache, bucket) == first[1:], what="disabled account gone")
    info = cache.bucket_info(bucket)
    assert info.account_count == 2
    assert info.rebuild_ms is not None
    wait_for(lambda: int(cache.stats().get("rebuilds", 0)) >= 2, what="rebuilds counted")
    # Not necessarily this bucket: a worker that wakes on commit (PostgreSQL) may
    # rebuild every warm bucket at its first poll, in any order.
    assert cache.stats()["last_rebuild_bucket"] in {str(b) for b in cache.list_buckets()}


class SlowSource:
    """The SQL source with slow account reads and last-use writes: a poll or a flush
    stays in flight long enough for the test to act while it runs. While a slow write
    runs, the key :data:`WRITING` is set in the worker's Redis, for the test to see."""

    delay = 0.6
    # Long enough that a test sees the flush in its write and kills it there.
    write_delay = 1.5

    def __init__(self, inner: SqlSource, redis_url: str) -> None:
        self.inner = inner
        self.redis = redis.Redis.from_url(redis_url)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_accounts(self, account_ids: Iterable[int]) -> dict[int, Account]:
        time.sleep(self.delay)
        return self.inner.get_accounts(account_ids)

    def outbox_after(self, after_id: int, limit: int) -> list[OutboxEvent]:
        return self.inner.outbox_after(after_id, limit)

    def update_last_used(self, updates: Mapping[int, datetime]) -> int:
        self.redis.set(WRITING, 1, px=int(self.write_delay * 1000))
        time.sleep(self.write_delay)
        return self.inner.update_last_used(updates)


WRITING = "test:slow-source:writing"


def slow_source(settings: Settings) -> SlowSource:
    return SlowSource(SqlSource.from_settings(settings), settings.redis_url)
