"""list_schedulable_async: the same answers and the same miss rules as list_schedulable,
awaited, against a real Redis and SQLite; and the process's own touches seen at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from cache import CacheUnavailable, RedisSchedulerCache, SchedulerBucket
from tasks import list_schedulable, list_schedulable_async, record_last_used, runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.web import aio, reader
from tasks.web.last_used import default_batcher
from tests.support import RedisServer, seed_group

T = TypeVar("T")


@pytest.fixture(autouse=True)
def fresh_limiter() -> Iterator[None]:
    reader._limiter = None
    yield
    reader._limiter = None


def run(steps: Callable[[], Awaitable[T]]) -> T:
    """``steps`` in a fresh event loop, closing the async reader at the end as an app's
    shutdown does."""

    async def main() -> T:
        try:
            return await steps()
        finally:
            await aio.aclose()

    return asyncio.run(main())


def use(settings: Settings, **changes: Any) -> None:
    runtime.reset(settings.model_copy(update=changes))


def rebuild_queued(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> bool:
    return bool(cache.client.hexists(cache.keys.rebuild_state(bucket), "queued"))


def test_a_miss_falls_back_once_then_reads_are_served_from_memory(
    source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    group = seed_group(source, accounts=3)
    bucket = SchedulerBucket(group.id, "openai", "single")

    async def steps() -> None:
        first = await list_schedulable_async(group.id, "openai")
        assert len(first) == 3
        assert task_cache.stats()["fallback_reads"] == "1"
        assert rebuild_queued(task_cache, bucket)
        again = await list_schedulable_async(group.id, "openai")
        assert [a.id for a in again] == [a.id for a in first]
        assert task_cache.stats()["fallback_reads"] == "1"
        held = await aio.reading()
        assert held.near is not None and str(bucket) in held.near.state.names()

    run(steps)


def test_a_rate_limited_account_returns_when_its_window_ends(
    source: SqlSource, task_cache: RedisSchedulerCache, db: SqlWriter
) -> None:
    group = seed_group(source, accounts=2)
    now = datetime.now(UTC)
    limited = db.create_account(
        name="limited",
        platform="openai",
        type="apikey",
        group_ids={group.id: 1},
        rate_limited_at=now,
        rate_limit_reset_at=now + timedelta(minutes=5),
    )
    bucket = SchedulerBucket(group.id, "openai", "single")
    list_schedulable(group.id, "openai", now=now)  # the miss: written through
    cached = {a.id: a for a in task_cache.get_snapshot(bucket) or []}
    ends = cached[limited.id].rate_limit_reset_at
    assert ends is not None

    async def steps() -> tuple[list[int], list[int]]:
        before = await list_schedulable_async(group.id, "openai", now=ends - timedelta(0, 0, 1))
        after = await list_schedulable_async(group.id, "openai", now=ends)
        return [a.id for a in before], [a.id for a in after]

    before, after = run(steps)
    assert limited.id not in before
    assert limited.id in after


def test_an_unknown_platform_is_refused_and_an_empty_snapshot_is_no_miss(
    source: SqlSource, task_cache: RedisSchedulerCache, db: SqlWriter
) -> None:
    group = db.create_group("empty", "openai")

    async def steps() -> None:
        with pytest.raises(ValueError, match=r"unknown platform 'nonsense'"):
            await list_schedulable_async(0, "nonsense")
        assert await list_schedulable_async(group.id, "openai") == []  # written empty
        assert await list_schedulable_async(group.id, "openai") == []

    run(steps)
    assert task_cache.stats()["fallback_reads"] == "1"


def test_a_key_of_the_wrong_type_degrades_the_read_and_names_the_key(
    source: SqlSource, task_cache: RedisSchedulerCache, caplog: pytest.LogCaptureFixture
) -> None:
    group = seed_group(source, accounts=2)
    bucket = SchedulerBucket(group.id, "openai", "single")
    first = [a.id for a in list_schedulable(group.id, "openai")]
    key = task_cache.keys.meta(bucket)
    task_cache.client.delete(key)
    task_cache.client.set(key, "not a hash")

    async def steps() -> list[int]:
        return [a.id for a in await list_schedulable_async(group.id, "openai")]

    assert run(steps) == first
    assert key in caplog.text
    assert task_cache.stats()["cache_read_errors"] == "1"
    assert rebuild_queued(task_cache, bucket)


def test_with_redis_down_a_read_falls_back_to_the_source_or_says_so(
    configured: Settings, source: SqlSource, private_redis: RedisServer
) -> None:
    group = seed_group(source)
    use(configured, redis_url=private_redis.url)
    private_redis.stop()

    async def steps() -> int:
        return len(await list_schedulable_async(group.id, "openai"))

    assert run(steps) == 3
    use(configured, redis_url=private_redis.url, fallback_enabled=False)
    with pytest.raises(CacheUnavailable):
        run(steps)


@pytest.fixture
def quiet_batcher(configured: Settings) -> Iterator[None]:
    """The process's batcher, flushed and stopped at the end: its next touch starts
    it again with the flush interval in force then, not this test's."""
    yield
    default_batcher().close()


@pytest.mark.usefixtures("quiet_batcher")
@pytest.mark.parametrize("near_cache", [True, False])
def test_the_process_sees_its_own_touch_at_once_and_a_new_version_at_the_next_read(
    configured: Settings, source: SqlSource, db: SqlWriter, near_cache: bool
) -> None:
    use(configured, near_cache=near_cache, last_used_cache_flush_seconds=60)
    group = seed_group(source, accounts=3)
    bucket = SchedulerBucket(group.id, "openai", "single")
    cache = runtime.get_cache()
    first = list_schedulable(group.id, "openai")  # the miss: written through
    list_schedulable(group.id, "openai")  # held from here on
    used_at = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    async def steps() -> None:
        await list_schedulable_async(group.id, "openai")
        record_last_used(first[0].id, used_at)  # not flushed for a minute
        if near_cache:
            for read in (list_schedulable(group.id, "openai"), await aio_read()):
                assert {a.id: a.last_used_at for a in read}[first[0].id] == used_at
        held = await aio.reading()
        assert (held.near is not None) is near_cache
        assert (runtime.get_near_cache() is not None) is near_cache
        db.update_account(first[1].id, status="disabled")
        cache.set_snapshot(
            bucket,
            source.accounts_for_bucket(bucket, datetime.now(UTC)),
            cache.reserve_version(bucket),
        )
        # The push travels on the near cache's own connection: give it a moment.
        deadline = asyncio.get_running_loop().time() + 1.5
        while first[1].id in [a.id for a in await aio_read()]:
            assert asyncio.get_running_loop().time() < deadline, "new version not seen"
            await asyncio.sleep(0.005)

    async def aio_read() -> list[Any]:
        return list(await list_schedulable_async(group.id, "openai"))

    run(steps)
