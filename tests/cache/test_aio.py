"""The asyncio read side: same reads and near cache semantics over redis.asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import redis

from cache import AsyncNearCache, AsyncSchedulerReader, RedisSchedulerCache, SchedulerBucket
from tests.cache.factories import T0, account, accounts

BUCKET = SchedulerBucket.parse("12:anthropic:mixed")


def run(redis_url: str, test: Callable[[AsyncSchedulerReader], Awaitable[None]]) -> None:
    async def main() -> None:
        reader = AsyncSchedulerReader.from_url(redis_url)
        try:
            await test(reader)
        finally:
            await reader.aclose()

    asyncio.run(main())


async def wait_until(condition: Callable[[], Awaitable[bool]], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await condition():
        assert loop.time() < deadline, f"not within {seconds} s"
        await asyncio.sleep(0.005)


def test_async_reads_match_the_sync_ones(cache: RedisSchedulerCache, redis_url: str) -> None:
    written = accounts(2500)  # beyond one read chunk
    cache.set_snapshot(BUCKET, written, cache.reserve_version(BUCKET))
    cache.update_last_used({7: T0})

    async def test(reader: AsyncSchedulerReader) -> None:
        got = await reader.get_snapshot(BUCKET)
        assert got == cache.get_snapshot(BUCKET)
        assert got is not None and got[6].last_used_at == T0
        assert await reader.get_snapshot(SchedulerBucket.parse("1:openai:single")) is None
        assert await reader.epoch() == cache.epoch()
        cache.reestablish(None, 0)
        assert await reader.epoch() == cache.epoch() is not None

    run(redis_url, test)


def test_async_near_cache_is_pushed_changes_and_touches(
    cache: RedisSchedulerCache, redis_client: redis.Redis, redis_url: str
) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))

    async def test(reader: AsyncSchedulerReader) -> None:
        near = AsyncNearCache(reader, check_seconds=0.1, trust_seconds=0.3)
        try:
            first = await near.list_schedulable(BUCKET, T0)
            assert first is not None and [a.id for a in first] == [1, 2, 3]
            await asyncio.sleep(0.2)
            before = redis_client.info("stats")["total_commands_processed"]
            for _ in range(100):
                await near.list_schedulable(BUCKET, T0)
            assert redis_client.info("stats")["total_commands_processed"] - before < 20
            limited = account(2, revision=2, overload_until=T0 + timedelta(minutes=1))
            cache.set_account(limited)

            async def two_left() -> bool:
                got = await near.list_schedulable(BUCKET, T0)
                return [a.id for a in got or []] == [1, 3]

            await wait_until(two_left, 1)
            near.note_last_used({1: T0})
            got = await near.get_snapshot(BUCKET)
            assert got is not None and got[0].last_used_at == T0
            cache.update_last_used({3: T0 + timedelta(seconds=2)})

            async def touched() -> bool:
                got = await near.get_snapshot(BUCKET)
                return got is not None and got[2].last_used_at == T0 + timedelta(seconds=2)

            await wait_until(touched, 1.5)
        finally:
            await near.aclose()

    run(redis_url, test)
