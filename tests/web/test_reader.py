"""list_schedulable: reads, read-time filtering, and the fallback on a miss."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cache import Account, CacheUnavailable, RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.web import reader
from tasks.web.last_used import record_last_used
from tasks.web.reader import TokenBucket, list_schedulable
from tasks.web.requests import request_rebuild
from tests.support import RedisServer, seed_group


@pytest.fixture(autouse=True)
def fresh_limiter() -> Iterator[None]:
    reader._limiter = None
    yield
    reader._limiter = None


def use(settings: Settings, **changes: Any) -> None:
    runtime.reset(settings.model_copy(update=changes))


def rebuild_queued(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> bool:
    """Whether a rebuild task was enqueued and has not started."""
    return bool(cache.client.hexists(cache.keys.rebuild_state(bucket), "queued"))


def test_a_rate_limited_account_returns_when_its_window_ends_without_a_rebuild(
    source: SqlSource, task_cache: RedisSchedulerCache, db: SqlWriter
) -> None:
    group = seed_group(source, accounts=2)
    now = datetime.now(UTC)
    reset_at = now + timedelta(minutes=5)
    limited = db.create_account(
        name="limited",
        platform="openai",
        type="apikey",
        group_ids={group.id: 1},
        rate_limited_at=now,
        rate_limit_reset_at=reset_at,
    )
    bucket = SchedulerBucket(group.id, "openai", "single")
    first = list_schedulable(group.id, "openai", now=now)  # miss: falls back, writes
    version = task_cache.bucket_info(bucket).active_version
    assert limited.id not in [a.id for a in first]

    cached = {a.id: a for a in task_cache.get_snapshot(bucket) or []}
    ends = cached[limited.id].rate_limit_reset_at  # as cached (millisecond precision)
    assert ends is not None and abs(ends - reset_at) < timedelta(milliseconds=1)
    before = [a.id for a in list_schedulable(group.id, "openai", now=ends - timedelta(0, 0, 1))]
    after = [a.id for a in list_schedulable(group.id, "openai", now=ends)]
    assert limited.id not in before
    assert limited.id in after
    # Nothing was rebuilt or written for it: the same snapshot, filtered at read time.
    assert task_cache.bucket_info(bucket).active_version == version
    assert "rebuilds" not in task_cache.stats()


def test_a_miss_falls_back_through_a_reserved_version_and_requests_a_rebuild(
    source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    group = seed_group(source, accounts=3)
    bucket = SchedulerBucket(group.id, "openai", "single")
    assert task_cache.get_snapshot(bucket) is None

    accounts = list_schedulable(group.id, "openai")

    assert len(accounts) == 3
    cached = task_cache.get_snapshot(bucket)
    assert cached is not None and [a.id for a in cached] == [a.id for a in accounts]
    assert task_cache.stats()["fallback_reads"] == "1"
    assert rebuild_queued(task_cache, bucket)
    # A hit from now on: no second fallback.
    list_schedulable(group.id, "openai")
    assert task_cache.stats()["fallback_reads"] == "1"


def test_without_fallback_a_miss_returns_nothing_and_requests_a_rebuild(
    configured: Settings, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    use(configured, fallback_enabled=False)
    group = seed_group(source)
    bucket = SchedulerBucket(group.id, "openai", "single")

    assert list_schedulable(group.id, "openai") == []
    assert task_cache.get_snapshot(bucket) is None
    assert rebuild_queued(runtime.get_cache(), bucket)


def test_fallback_reads_are_rate_limited(
    configured: Settings, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    use(configured, fallback_per_second=0.01)  # one read, then none for 100 s
    first, second = seed_group(source), seed_group(source)

    assert len(list_schedulable(first.id, "openai")) == 3
    assert list_schedulable(second.id, "openai") == []
    assert rebuild_queued(runtime.get_cache(), SchedulerBucket(second.id, "openai", "single"))
    assert runtime.get_cache().stats()["fallback_reads"] == "1"


def test_an_active_empty_snapshot_is_not_a_miss(
    source: SqlSource, task_cache: RedisSchedulerCache, db: SqlWriter
) -> None:
    group = db.create_group("empty", "openai")
    assert list_schedulable(group.id, "openai") == []  # falls back, writes it empty
    assert list_schedulable(group.id, "openai") == []
    assert task_cache.stats()["fallback_reads"] == "1"


class StaleRead:
    """A source whose read is overtaken: a rebuild reserves, reads and writes newer
    data while this read is in flight, and this read returns what it saw before."""

    def __init__(self, inner: SqlSource, cache: RedisSchedulerCache) -> None:
        self.inner, self.cache = inner, cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def accounts_for_bucket(self, bucket: SchedulerBucket, now: datetime) -> list[Account]:
        stale = self.inner.accounts_for_bucket(bucket, now)
        SqlWriter(self.inner).update_account(stale[0].id, status="disabled")
        newer = self.cache.reserve_version(bucket)
        self.cache.set_snapshot(bucket, self.inner.accounts_for_bucket(bucket, now), newer)
        return stale


def test_a_fallback_cannot_activate_data_older_than_a_rebuild(
    source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    group = seed_group(source, accounts=3)
    bucket = SchedulerBucket(group.id, "openai", "single")
    runtime._source = StaleRead(source, task_cache)

    list_schedulable(group.id, "openai")

    active = task_cache.get_snapshot(bucket)
    assert active is not None and len(active) == 2  # the rebuild's newer read won


def test_with_redis_down_a_read_falls_back_to_the_source_or_says_so(
    configured: Settings, source: SqlSource, private_redis: RedisServer
) -> None:
    group = seed_group(source)
    use(configured, redis_url=private_redis.url)
    private_redis.stop()
    assert len(list_schedulable(group.id, "openai")) == 3

    use(configured, redis_url=private_redis.url, fallback_enabled=False)
    with pytest.raises(CacheUnavailable):
        list_schedulable(group.id, "openai")


def test_the_token_bucket_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = TokenBucket(2.0, burst=2, clock=lambda: now[0])
    assert [limiter.try_take() for _ in range(3)] == [True, True, False]
    now[0] = 0.5  # one token back
    assert [limiter.try_take() for _ in range(2)] == [True, False]
    with pytest.raises(ValueError, match="-1"):
        TokenBucket(-1)


def test_request_rebuild_rejects_a_malformed_bucket(configured: Settings) -> None:
    with pytest.raises(ValueError, match="'1:openai'"):
        request_rebuild("1:openai")


def test_an_unknown_platform_is_refused_and_registers_nothing(
    configured: Settings, task_cache: RedisSchedulerCache
) -> None:
    with pytest.raises(ValueError, match=r"unknown platform 'nonsense': configured are anthropic"):
        list_schedulable(0, "nonsense")
    with pytest.raises(ValueError, match=r"unknown platform 'nosuchplat'"):
        request_rebuild("0:nosuchplat:single")
    assert task_cache.client.keys("*") == []


def test_a_read_that_finds_a_corrupt_payload_asks_for_the_rebuild_and_counts_it(
    configured: Settings, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    group = seed_group(source, accounts=2)
    bucket = SchedulerBucket(group.id, "openai", "single")
    first = list_schedulable(group.id, "openai")  # a miss: read through, written
    use(configured, fallback_enabled=False)
    task_cache.abandon_rebuild_request(bucket)
    active = task_cache.bucket_info(bucket).active_version
    assert active is not None
    payloads = task_cache.keys.payloads(bucket, active)
    task_cache.client.hset(payloads, str(first[0].id), b"not json")
    misses = int(task_cache.stats()["snapshot_misses"])  # the first read's

    assert list_schedulable(group.id, "openai") == []
    assert rebuild_queued(task_cache, bucket)
    assert int(task_cache.stats()["snapshot_misses"]) == misses + 1
    # What the requested rebuild writes replaces the garbage.
    version = task_cache.reserve_version(bucket)
    task_cache.set_snapshot(bucket, source.accounts_for_bucket(bucket, datetime.now(UTC)), version)
    assert [a.id for a in list_schedulable(group.id, "openai")] == [a.id for a in first]


@pytest.mark.parametrize("which", ["meta", "last_used"])
def test_a_key_of_the_wrong_type_degrades_the_read_and_names_the_key(
    configured: Settings,
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    which: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = seed_group(source, accounts=2)
    bucket = SchedulerBucket(group.id, "openai", "single")
    first = list_schedulable(group.id, "openai")
    key = task_cache.keys.meta(bucket) if which == "meta" else task_cache.keys.last_used
    task_cache.client.delete(key)
    task_cache.client.set(key, "not a hash")

    assert [a.id for a in list_schedulable(group.id, "openai")] == [a.id for a in first]
    assert key in caplog.text
    assert task_cache.stats()["cache_read_errors"] == "1"
    assert rebuild_queued(task_cache, bucket)


def test_a_fallback_answer_never_shows_a_last_use_older_than_redis_or_own_touches(
    source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    group = seed_group(source, accounts=3)
    bucket = SchedulerBucket(group.id, "openai", "single")
    first, second, third = (a.id for a in list_schedulable(group.id, "openai"))
    # The database lags: a use another process sent to Redis, and one this process has
    # not sent yet; neither reached the source.
    now = datetime.now(UTC).replace(microsecond=0)
    task_cache.update_last_used({first: now})
    record_last_used(second, now + timedelta(seconds=1))
    task_cache.client.delete(task_cache.keys.meta(bucket))  # the next read misses

    got = {a.id: a.last_used_at for a in list_schedulable(group.id, "openai")}

    assert task_cache.stats()["fallback_reads"] == "2"
    assert got == {first: now, second: now + timedelta(seconds=1), third: None}
