"""One account put into a bucket's active version at its place in snapshot order, or
moved there, without a rebuild (cache/placements.py, cache/lua/place_account.lua)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache import AsyncSchedulerReader, Place, RedisSchedulerCache, SchedulerBucket
from cache.keys import READ_CHUNK
from cache.reads import ReadPlan
from tests.cache.factories import account

BUCKET = SchedulerBucket.parse("12:anthropic:single")
OTHER = SchedulerBucket.parse("12:anthropic:forced")


class Pushes:
    """Messages on the changes channel, collected when drained."""

    def __init__(self, pubsub: redis.client.PubSub) -> None:
        self.pubsub = pubsub

    def drain(self) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            message = self.pubsub.get_message(timeout=0.05)
            if message is not None:
                seen.append(message["data"].decode())
        return seen


@pytest.fixture
def pushes(cache: RedisSchedulerCache, redis_client: redis.Redis) -> Iterator[Pushes]:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(cache.keys.changes_channel)
    assert pubsub.get_message(timeout=1) is not None  # the subscription itself
    try:
        yield Pushes(pubsub)
    finally:
        pubsub.close()


def ids(cache: RedisSchedulerCache, bucket: SchedulerBucket = BUCKET) -> list[int]:
    return [a.id for a in cache.get_snapshot(bucket) or []]


def listed(cache: RedisSchedulerCache, bucket: SchedulerBucket = BUCKET) -> list[int]:
    """The active version's id list as stored (removed ids included)."""
    version = cache.bucket_info(bucket).active_version or 0
    return [int(i) for i in cache.client.lrange(cache.keys.snapshot(bucket, version), 0, -1)]


def count(cache: RedisSchedulerCache, bucket: SchedulerBucket = BUCKET) -> int:
    return int(cache.client.hget(cache.keys.meta(bucket), "count") or 0)


def built(cache: RedisSchedulerCache, *account_ids: int) -> int:
    assert cache.set_snapshot(BUCKET, [account(i, priority=i) for i in account_ids])
    return cache.bucket_info(BUCKET).active_version or 0


def test_an_insert_goes_before_the_first_listed_follower_and_is_pushed_once(
    cache: RedisSchedulerCache, pushes: Pushes
) -> None:
    version = built(cache, 10, 20, 30)
    pushes.drain()

    placed = cache.place_account(BUCKET, account(25, priority=25), [27, 30, 40])

    assert placed.status == Place.PLACED and placed.version == version and not placed.racing
    assert ids(cache) == [10, 20, 25, 30]
    assert count(cache) == 4
    assert cache.bucket_info(BUCKET).active_version == version  # no rebuild
    gen = int(cache.client.hget(cache.keys.meta(BUCKET), "gen") or 0)
    assert pushes.drain() == [f"{BUCKET} {version} {gen} 25"]


def test_an_insert_with_no_follower_listed_goes_last(cache: RedisSchedulerCache) -> None:
    built(cache, 10, 20)
    assert cache.place_account(BUCKET, account(30, priority=30), []).status == Place.APPENDED
    assert cache.place_account(BUCKET, account(5, priority=5), [99]).status == Place.APPENDED
    assert ids(cache) == [10, 20, 30, 5]


def test_a_move_takes_the_account_from_its_old_place(
    cache: RedisSchedulerCache, pushes: Pushes
) -> None:
    built(cache, 10, 20, 30, 40)
    pushes.drain()
    moved = account(10, priority=35, revision=2)
    assert cache.set_account(moved)  # the patch: same place, new payload
    assert cache.place_account(BUCKET, moved, [40]).status == Place.PLACED
    assert ids(cache) == [20, 30, 10, 40]
    assert count(cache) == 4
    assert [m.split()[3] for m in pushes.drain()] == ["10", "10"]
    # Placed again at the same revision: the same place (a poll applied twice).
    assert cache.place_account(BUCKET, moved, [40]).status == Place.PLACED
    assert listed(cache) == [20, 30, 10, 40]


def test_a_newer_revision_or_a_later_removal_stops_a_stale_insert(
    cache: RedisSchedulerCache,
) -> None:
    built(cache, 10, 20)
    assert cache.set_account(account(10, revision=5, priority=10))
    stale = cache.place_account(BUCKET, account(10, revision=4, priority=25), [])
    assert stale.status == Place.STALE
    assert ids(cache) == [10, 20]
    assert cache.get_snapshot(BUCKET)[0].revision == 5  # type: ignore[index]

    # Removed from the bucket at revision 6 (entry '-' at 6.25): an insert read at 6
    # must not bring it back; one read at 7 does.
    assert cache.set_account(account(10, revision=6, group_ids=(13,)), belongs=[])
    assert ids(cache) == [20]
    assert cache.place_account(BUCKET, account(10, revision=6), [20]).status == Place.STALE
    assert ids(cache) == [20]
    assert cache.place_account(BUCKET, account(10, revision=7), [20]).status == Place.PLACED
    assert ids(cache) == [10, 20]
    assert count(cache) == 2  # it never left the list: no second count


def test_a_deletion_stops_a_stale_insert(cache: RedisSchedulerCache) -> None:
    built(cache, 10, 20)
    cache.delete_account(20, revision=3)
    assert cache.place_account(BUCKET, account(20, revision=3), []).status == Place.STALE
    assert ids(cache) == [10]


def test_a_bucket_without_an_active_version_is_left_to_its_first_build(
    cache: RedisSchedulerCache,
) -> None:
    placed = cache.place_account(BUCKET, account(1), [])
    assert (placed.status, placed.version) == (Place.IDLE, 0)
    assert cache.get_snapshot(BUCKET) is None


def test_a_version_reserved_above_the_active_one_is_reported_as_racing(
    cache: RedisSchedulerCache,
) -> None:
    built(cache, 10)
    cache.reserve_version(BUCKET)  # a rebuild in flight, which read the source before
    assert cache.place_account(BUCKET, account(20, priority=20), []).racing


def test_the_script_names_the_active_version_when_called_with_another(
    cache: RedisSchedulerCache,
) -> None:
    version = built(cache, 10)
    k = cache.keys
    reply = cache.placer._w.scripts["place_account"](
        keys=[
            k.meta(BUCKET),
            k.version_counter(BUCKET),
            k.snapshot(BUCKET, version - 1),
            k.payloads(BUCKET, version - 1),
            k.entries(BUCKET, version - 1),
        ],
        args=[version - 1, 20, 1, "d", b"{}", "", k.changes_channel, str(BUCKET)],
    )
    assert [int(r) for r in reply] == [Place.MOVED, version, version]


def test_an_inserted_account_is_indexed_so_later_changes_reach_it(
    cache: RedisSchedulerCache,
) -> None:
    version = built(cache, 10, 20)
    cache.place_account(BUCKET, account(15, priority=15), [20])
    assert cache.client.hget(cache.keys.account_buckets(15), str(BUCKET)) == str(version).encode()
    assert cache.set_account(account(15, priority=15, revision=2, name="renamed"))
    assert {a.id: a.name for a in cache.get_snapshot(BUCKET) or []}[15] == "renamed"
    # ... and leaves it when it leaves the bucket.
    assert cache.set_account(account(15, priority=15, revision=3), belongs=[OTHER])
    assert ids(cache) == [10, 20]


def test_the_index_keeps_a_newer_version_a_writer_staged(cache: RedisSchedulerCache) -> None:
    built(cache, 10)
    key = cache.keys.account_buckets(20)
    cache.client.hset(key, str(BUCKET), 99)  # a writer staged v99 and indexed it
    cache.place_account(BUCKET, account(20, priority=20), [])
    assert cache.client.hget(key, str(BUCKET)) == b"99"


def test_a_patch_names_the_account_and_a_rebuild_does_not(
    cache: RedisSchedulerCache, pushes: Pushes
) -> None:
    version = built(cache, 10)
    assert [len(m.split()) for m in pushes.drain()] == [3]
    cache.set_account(account(10, priority=10, revision=2, name="x"))
    assert pushes.drain() == [f"{BUCKET} {version} 2 10"]
    cache.delete_account(10)
    assert pushes.drain() == [f"{BUCKET} {version} 3 10"]


OVERTAKEN = READ_CHUNK * 2 + 10


@pytest.fixture
def overtaken(cache: RedisSchedulerCache, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """A bucket of OVERTAKEN accounts whose first read is overtaken, between its first
    chunk and the rest, by an insert before account 5; the order a read must return."""
    assert cache.set_snapshot(BUCKET, [account(i, priority=0) for i in range(1, OVERTAKEN + 1)])
    rest_ranges = ReadPlan.rest_ranges
    inserted: list[int] = []

    def insert_first(plan: ReadPlan) -> list[tuple[str, int, int]]:
        ranges = rest_ranges(plan)
        if not inserted:
            inserted.append(OVERTAKEN + 1)
            cache.place_account(BUCKET, account(OVERTAKEN + 1, priority=0), [5])
        return ranges

    monkeypatch.setattr(ReadPlan, "rest_ranges", insert_first)
    return [1, 2, 3, 4, OVERTAKEN + 1, *range(5, OVERTAKEN + 1)]


def test_a_chunked_read_that_an_insert_overtakes_reads_again(
    cache: RedisSchedulerCache, overtaken: list[int]
) -> None:
    """Past the first chunk, ids are read by offset: an insert between the first chunk
    and the rest would shift them (one id twice, the last one missed). The read sees gen
    move and reads again."""
    read = cache.read_snapshot(BUCKET)
    assert read is not None
    assert [a.id for a in read.accounts] == overtaken


def test_an_asyncio_chunked_read_that_an_insert_overtakes_reads_again(
    redis_url: str, overtaken: list[int]
) -> None:
    """The same with the asyncio reader."""

    async def read() -> list[int]:
        reader = AsyncSchedulerReader.from_url(redis_url)
        try:
            found = await reader.read_snapshot(BUCKET)
        finally:
            await reader.aclose()
        assert found is not None
        return [a.id for a in found.accounts]

    assert asyncio.run(read()) == overtaken


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    start=st.lists(st.integers(1, 30), unique=True, max_size=12),
    steps=st.lists(
        st.tuples(st.integers(1, 40), st.lists(st.integers(1, 40), max_size=4)), max_size=10
    ),
)
def test_placing_matches_a_reference_list(
    cache: RedisSchedulerCache, start: list[int], steps: list[tuple[int, list[int]]]
) -> None:
    """Against a brute-force reference: the id leaves its old place and goes before the
    first listed follower (itself excepted), else last."""
    cache.client.flushdb()
    assert cache.set_snapshot(BUCKET, [account(i) for i in start], cache.reserve_version(BUCKET))
    reference = list(start)
    revision = 1
    for account_id, followers in steps:
        revision += 1
        placed = cache.place_account(BUCKET, account(account_id, revision=revision), followers)
        if account_id in reference:
            reference.remove(account_id)
        pivot = next((f for f in followers if f != account_id and f in reference), None)
        if pivot is None:
            reference.append(account_id)
            assert placed.status == Place.APPENDED
        else:
            reference.insert(reference.index(pivot), account_id)
            assert placed.status == Place.PLACED
        assert listed(cache) == reference
        assert count(cache) == len(reference)


def test_an_account_placed_just_after_an_activation_stays_indexed(
    cache: RedisSchedulerCache,
) -> None:
    """A rebuild read the bucket without account 20 and activated v2; before it drops
    the entries of accounts v2 no longer lists, 20 is put into v2 in place. Its entry
    must stay, or no later change (its removal) reaches it."""
    built(cache, 10, 20)
    settle = cache.snapshots._settle

    def placed_first(*args: object, **kwargs: object) -> None:
        assert cache.place_account(BUCKET, account(20, revision=2), []).status == Place.APPENDED
        settle(*args, **kwargs)  # type: ignore[arg-type]

    cache.snapshots._settle = placed_first  # type: ignore[method-assign]
    assert cache.set_snapshot(BUCKET, [account(10)], cache.reserve_version(BUCKET))
    cache.snapshots._settle = settle  # type: ignore[method-assign]
    assert ids(cache) == [10, 20]
    assert cache.set_account(account(20, revision=3), belongs=[])
    assert ids(cache) == [10]
