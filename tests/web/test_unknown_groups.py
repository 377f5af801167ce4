"""A group the source does not know: answered empty, nothing written, nothing registered,
and a flood of made-up ids costs neither Redis keys nor a source read per request."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis

from cache import Account, RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.web import reader
from tasks.web.groups import RECHECK_SECONDS, KnownGroups
from tasks.web.reader import list_schedulable
from tests.support import RedisServer, seed_group


class CountingSource:
    """The SQL source, counting the reads a web process makes of it."""

    def __init__(self, inner: SqlSource) -> None:
        self.inner = inner
        self.group_reads = 0
        self.bucket_reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def active_groups(self) -> Any:
        self.group_reads += 1
        return self.inner.active_groups()

    def accounts_for_bucket(self, bucket: SchedulerBucket, now: datetime) -> list[Account]:
        self.bucket_reads += 1
        return self.inner.accounts_for_bucket(bucket, now)


@pytest.fixture(autouse=True)
def fresh_process_state() -> Iterator[None]:
    reader._limiter = None
    reader._known = None
    yield
    reader._limiter = None
    reader._known = None


@pytest.fixture
def counting(source: SqlSource) -> CountingSource:
    counted = CountingSource(source)
    runtime._source = counted
    return counted


def everything(client: redis.Redis) -> dict[object, object]:
    return {key: client.dump(key) for key in client.keys("*")}


@pytest.mark.slow
def test_ten_thousand_unknown_groups_cost_no_key_and_one_group_read_a_second(
    counting: CountingSource, task_cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    known = seed_group(counting.inner, accounts=2)
    assert len(list_schedulable(known.id, "openai")) == 2  # registers the known one
    registry = task_cache.list_buckets()
    before = everything(redis_client)
    dbsize = redis_client.dbsize()
    reads_before = counting.group_reads
    unknown = [known.id + 1_000 + n for n in range(10_000)]

    started = time.monotonic()
    for group_id in unknown:
        assert list_schedulable(group_id, "gemini") == []
    for group_id in unknown:  # again, within the period: remembered as unknown
        assert list_schedulable(group_id, "gemini", has_force=True) == []
    elapsed = time.monotonic() - started

    assert redis_client.dbsize() == dbsize
    assert everything(redis_client) == before  # no key added, changed or gone
    assert task_cache.list_buckets() == registry
    assert counting.bucket_reads == 1  # the known group's fallback, nothing since
    reads = counting.group_reads - reads_before
    assert reads <= 1 + math.ceil(elapsed / RECHECK_SECONDS), (reads, elapsed)


def test_a_known_group_still_falls_back_and_registers(
    counting: CountingSource, task_cache: RedisSchedulerCache
) -> None:
    group = seed_group(counting.inner, accounts=3)
    assert len(list_schedulable(group.id, "openai")) == 3
    assert SchedulerBucket(group.id, "openai", "single") in task_cache.list_buckets()
    # Group 0 (accounts in no group) is always known.
    list_schedulable(0, "anthropic")
    assert SchedulerBucket(0, "anthropic", "mixed") in task_cache.list_buckets()


def test_an_inactive_group_is_not_registered(
    counting: CountingSource, task_cache: RedisSchedulerCache, db: SqlWriter
) -> None:
    group = db.create_group("off", "openai", status="disabled")
    assert list_schedulable(group.id, "openai") == []
    assert task_cache.list_buckets() == []
    assert counting.bucket_reads == 0


def test_an_unknown_group_with_redis_down_reads_no_accounts(
    configured: Settings, source: SqlSource, private_redis: RedisServer
) -> None:
    runtime.reset(configured.model_copy(update={"redis_url": private_redis.url}))
    counted = CountingSource(source)
    runtime._source = counted
    private_redis.stop()
    assert list_schedulable(987_654, "openai") == []
    assert counted.bucket_reads == 0


# -- KnownGroups on its own, with a clock moved by hand ----------------------------------
class Loader:
    def __init__(self, *groups: int) -> None:
        self.groups = set(groups)
        self.calls = 0
        self.fail = False

    def __call__(self) -> set[int]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("source down")
        return set(self.groups)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_new_group_is_found_after_the_recheck_and_unknown_ids_expire() -> None:
    load, clock = Loader(5), Clock()
    known = KnownGroups(load, ttl=30, max_unknown=10, recheck=1, clock=clock)
    assert known.knows(5) and known.knows(0)
    assert not known.knows(6)
    assert load.calls == 1  # the list was fresh: no second read for 6
    load.groups.add(6)
    clock.now += 2
    assert not known.knows(6)  # remembered as unknown for the period
    assert not known.knows(7)  # a new id after the recheck reads again ...
    assert load.calls == 2
    assert known.knows(6)  # ... and that read found 6
    clock.now += 31
    assert known.knows(6)


def test_the_unknown_ids_are_bounded_and_a_failing_source_is_not_asked_per_call() -> None:
    load, clock = Loader(), Clock()
    known = KnownGroups(load, ttl=30, max_unknown=100, recheck=1, clock=clock)
    for group_id in range(1, 10_001):
        assert not known.knows(group_id)
    assert len(known._unknown) == 100
    assert load.calls == 1
    load.fail = True
    clock.now += 31
    for group_id in range(1, 1_001):
        assert not known.knows(group_id)
    assert load.calls == 2


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="-1"):
        KnownGroups(Loader(), ttl=-1, max_unknown=5)
