"""A pushed change of one account, applied to what a near cache holds without reading
the bucket again: against a real Redis, the version's keys written here and the
four-field message published here, as a writer of one-account changes does."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
import redis

from cache import (
    Account,
    AsyncNearCache,
    AsyncSchedulerReader,
    NearCache,
    RedisSchedulerCache,
    SchedulerBucket,
)
from cache.pickindex import scan
from tests.cache.factories import T0, account, accounts

BUCKET = SchedulerBucket.parse("12:anthropic:mixed")
NearFactory = Callable[..., NearCache]


class Writer:
    """Changes one account of the active version the way the write side does, and
    announces ``'<bucket> <version> <gen> <account id>'``."""

    def __init__(self, cache: RedisSchedulerCache, client: redis.Redis) -> None:
        self.cache, self.client, self.keys = cache, client, cache.keys
        self.version = int(client.hget(self.keys.meta(BUCKET), "active") or 0)
        self.ids = self.keys.snapshot(BUCKET, self.version)
        # Announces not published yet (while ``holding``): a writer slower to publish.
        self.holding = False
        self.held: list[str] = []

    def _announce(self, pipe: redis.client.Pipeline, account_id: int, step: int = 1) -> None:
        pipe.hincrby(self.keys.meta(BUCKET), "gen", step)
        gen = pipe.execute()[-1]
        message = f"{BUCKET} {self.version} {gen} {account_id}"
        if self.holding:
            self.held.append(message)
        else:
            self.client.publish(self.keys.changes_channel, message)

    def release(self) -> None:
        for message in self.held:
            self.client.publish(self.keys.changes_channel, message)
        self.held, self.holding = [], False

    def _put(self, pipe: redis.client.Pipeline, changed: Account) -> None:
        payload, digest = self.cache.reader.codec.encode(changed)
        pipe.hset(
            self.keys.entries(BUCKET, self.version), str(changed.id), f"{digest}/{changed.revision}"
        )
        pipe.hset(self.keys.payloads(BUCKET, self.version), str(changed.id), payload)

    def payload(self, changed: Account, step: int = 1) -> None:
        pipe = self.client.pipeline()
        self._put(pipe, changed)
        self._announce(pipe, changed.id, step)

    def delete(self, account_id: int) -> None:
        """Deleted: its entry says so, its payload goes, its id stays listed."""
        pipe = self.client.pipeline()
        pipe.hset(self.keys.entries(BUCKET, self.version), str(account_id), "-/9.5")
        pipe.hdel(self.keys.payloads(BUCKET, self.version), str(account_id))
        self._announce(pipe, account_id)

    def unlist(self, account_id: int) -> None:
        """Removed from the id list altogether."""
        pipe = self.client.pipeline()
        pipe.lrem(self.ids, 0, str(account_id))
        pipe.hdel(self.keys.entries(BUCKET, self.version), str(account_id))
        pipe.hdel(self.keys.payloads(BUCKET, self.version), str(account_id))
        self._announce(pipe, account_id)

    def insert(self, changed: Account, before: int) -> None:
        """Listed before account ``before`` (inserted, or moved there when listed)."""
        pipe = self.client.pipeline()
        pipe.lrem(self.ids, 0, str(changed.id))
        pipe.linsert(self.ids, "BEFORE", str(before), str(changed.id))
        self._put(pipe, changed)
        self._announce(pipe, changed.id)


def wait_until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s"
        time.sleep(0.005)


def subscribed(client: redis.Redis, channel: str, count: int = 1) -> Callable[[], bool]:
    return lambda: int(client.pubsub_numsub(channel)[0][1]) >= count


def fresh(cache: RedisSchedulerCache) -> list[Account] | None:
    """What a full read of the bucket finds now (a cache with nothing held)."""
    return RedisSchedulerCache(cache.client).get_snapshot(BUCKET)


def unused(accounts: Sequence[Account] | None) -> list[dict[str, Any]]:
    """The accounts less their last uses (which this process's own picks move)."""
    return [a.model_dump(exclude={"last_used_at"}) for a in accounts or []]


def holding_ten(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory
) -> tuple[NearCache, Writer]:
    """A near cache holding a bucket of ten accounts and hearing its pushes, and the
    writer of the changes it is to hear."""
    cache.set_snapshot(BUCKET, accounts(10), cache.reserve_version(BUCKET))
    near = near_cache(check_seconds=5, trust_seconds=10)
    near.get_snapshot(BUCKET)
    wait_until(subscribed(redis_client, cache.keys.changes_channel))
    return near, Writer(cache, redis_client)


@pytest.mark.parametrize("decoded", [True, False], ids=["decoded", "lazy"])
def test_each_kind_of_one_account_change_is_applied_in_place(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory, decoded: bool
) -> None:
    cache.set_snapshot(BUCKET, accounts(30), cache.reserve_version(BUCKET))
    near = near_cache(check_seconds=5, trust_seconds=10, max_decoded=1_000 if decoded else 10)
    assert near.get_snapshot(BUCKET) == fresh(cache)
    wait_until(subscribed(redis_client, cache.keys.changes_channel))
    writer = Writer(cache, redis_client)
    changes: list[Callable[[], None]] = [
        lambda: writer.payload(account(5, revision=2, name="renamed", priority=1)),
        lambda: writer.delete(7),
        lambda: writer.unlist(9),
        lambda: writer.insert(account(31, revision=1, name="new"), before=3),
        lambda: writer.insert(account(20, revision=3, name="moved"), before=1),
        lambda: writer.payload(account(2, revision=2, overload_until=T0 + timedelta(hours=1))),
    ]
    for n, change in enumerate(changes, start=1):
        change()
        wait_until(lambda n=n: near.state.patches == n)  # type: ignore[misc]
        held = near.get_snapshot(BUCKET)
        assert unused(held) == unused(fresh(cache))
        assert near.list_schedulable(BUCKET, T0) == [a for a in held or [] if a.is_schedulable(T0)]
        later = T0 + timedelta(minutes=n)
        expected = scan(near.get_snapshot(BUCKET) or [], later)
        choice = near.pick(BUCKET, later)
        assert choice is not None and choice.account == expected
    assert near.state.reads == 1  # the first read only: every change was a patch
    names = [a.name for a in near.get_snapshot(BUCKET) or []]
    assert names[:4] == ["moved", "acct-1", "acct-2", "new"]
    assert "acct-7" not in names and "acct-9" not in names


def test_a_gap_in_gens_falls_back_to_reading_the_bucket(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory
) -> None:
    near, writer = holding_ten(cache, redis_client, near_cache)
    # A change whose push this process did not get, then one it did: gen skips one.
    writer.payload(account(3, revision=2, name="unseen"), step=2)
    wait_until(lambda: near.get_snapshot(BUCKET) == fresh(cache))
    assert near.state.patches == 0 and near.state.reads == 2
    assert [a.name for a in near.get_snapshot(BUCKET) or []][2] == "unseen"


def test_a_patch_read_after_the_bucket_moved_on_is_not_applied(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory
) -> None:
    """Two changes made before the first is heard: the first one's fetch finds the gen of
    the second, and places read then are of a list the cache does not hold yet."""
    near, writer = holding_ten(cache, redis_client, near_cache)
    writer.holding = True
    writer.insert(account(4, revision=2, name="first"), before=1)
    writer.insert(account(2, revision=2, name="before it"), before=4)
    writer.release()  # the list's length never changed: only the gen tells
    wait_until(lambda: near.get_snapshot(BUCKET) == fresh(cache))
    assert [a.id for a in near.get_snapshot(BUCKET) or []][:4] == [2, 4, 1, 3]
    assert near.state.patches == 0 and near.state.reads == 2


def test_a_push_for_another_version_or_of_three_fields_reads_the_bucket(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory
) -> None:
    near, writer = holding_ten(cache, redis_client, near_cache)
    writer.version += 1  # announces a version this process does not hold
    writer.payload(account(4, revision=2, name="elsewhere"))
    wait_until(lambda: near.state.reads == 2 or near.get_snapshot(BUCKET) is None)
    # A rebuild's activation announces three fields: read the bucket.
    rebuilt = [*accounts(5), account(6, revision=5, name="three-fields"), *accounts(4, start=7)]
    cache.set_snapshot(BUCKET, rebuilt, cache.reserve_version(BUCKET))
    wait_until(lambda: "three-fields" in [a.name for a in near.get_snapshot(BUCKET) or []])
    assert near.state.patches == 0 and near.state.reads == 3


def test_the_asyncio_near_cache_applies_the_same_patches(
    cache: RedisSchedulerCache, redis_client: redis.Redis, redis_url: str
) -> None:
    cache.set_snapshot(BUCKET, accounts(20), cache.reserve_version(BUCKET))
    writer = Writer(cache, redis_client)

    async def test() -> None:
        reader = AsyncSchedulerReader.from_url(redis_url)
        near = AsyncNearCache(reader, check_seconds=5, trust_seconds=10)
        loop = asyncio.get_running_loop()

        async def until(condition: Callable[[], bool]) -> None:
            deadline = loop.time() + 3
            while not condition():
                assert loop.time() < deadline
                await asyncio.sleep(0.005)

        try:
            assert await near.get_snapshot(BUCKET) == fresh(cache)
            await until(subscribed(redis_client, cache.keys.changes_channel))
            writer.payload(account(5, revision=2, name="renamed"))
            await until(lambda: near.state.patches == 1)
            writer.insert(account(21, revision=1, name="new"), before=2)
            await until(lambda: near.state.patches == 2)
            assert await near.get_snapshot(BUCKET) == fresh(cache)
            assert near.state.reads == 1
            writer.payload(account(6, revision=2, name="gap"), step=2)
            got = None
            for _ in range(200):
                got = await near.get_snapshot(BUCKET)
                if got == fresh(cache):
                    break
                await asyncio.sleep(0.005)
            assert got == fresh(cache) and near.state.reads == 2
        finally:
            await near.aclose()
            await reader.aclose()

    asyncio.run(test())
