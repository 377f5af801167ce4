"""A change reaches every snapshot version that lists the account, with one push per
bucket whose active version changed (docs/write-path.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from cache import RedisSchedulerCache, SchedulerBucket
from cache.accounts import Staged
from tests.cache.factories import account

FORCED = SchedulerBucket.parse("7:openai:forced")
SINGLE = SchedulerBucket.parse("12:openai:single")


def _openai(account_id: int, **changes: object) -> object:
    return account(account_id, platform="openai", group_ids=(), **changes)


@pytest.fixture
def pushes(cache: RedisSchedulerCache, redis_client: redis.Redis) -> Iterator[list[str]]:
    """Messages on the changes channel, collected when read."""
    pubsub = redis_client.pubsub()
    pubsub.subscribe(cache.keys.changes_channel)
    assert pubsub.get_message(timeout=1) is not None  # the subscription itself
    seen: list[str] = []

    class Collected(list[str]):
        def drain(self) -> list[str]:
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.05)
                if message is not None:
                    seen.append(message["data"].decode())
            got = list(seen)
            seen.clear()
            return got

    try:
        yield Collected()
    finally:
        pubsub.close()


def _ids(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> list[int]:
    return [a.id for a in cache.get_snapshot(bucket) or []]


def test_a_deleted_account_leaves_every_snapshot_whatever_its_groups(
    cache: RedisSchedulerCache,
) -> None:
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    cache.delete_account(701)
    assert 701 not in _ids(cache, FORCED)


def test_a_changed_account_reaches_every_snapshot_whatever_its_groups(
    cache: RedisSchedulerCache,
) -> None:
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    assert cache.set_snapshot(SINGLE, [_openai(701)])  # type: ignore[list-item]
    assert cache.set_account(_openai(701, revision=2, status="disabled"))  # type: ignore[arg-type]
    for bucket in (FORCED, SINGLE):
        served = {a.id: a for a in cache.get_snapshot(bucket) or []}
        assert served[701].status == "disabled" and served[701].revision == 2


def test_one_push_per_bucket_a_change_reaches(cache: RedisSchedulerCache, pushes: object) -> None:
    drain = pushes.drain  # type: ignore[attr-defined]
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    assert cache.set_snapshot(SINGLE, [_openai(701)])  # type: ignore[list-item]
    assert len(drain()) == 2  # one activation each
    cache.set_account(_openai(701, revision=2, name="renamed"))  # type: ignore[arg-type]
    assert sorted(m.split()[0] for m in drain()) == sorted([str(FORCED), str(SINGLE)])
    cache.set_account(_openai(702, revision=1))  # type: ignore[arg-type]  # same payload
    assert drain() == []


def test_a_change_during_a_write_costs_the_write_no_second_push(
    cache: RedisSchedulerCache, pushes: object
) -> None:
    """set_account between staging and indexing: the writer puts the change into its
    staged version before activating it, so readers get one push, with the change in."""
    drain = pushes.drain  # type: ignore[attr-defined]
    index = cache.accounts.index

    def racing(bucket: SchedulerBucket, version: int, staged: list[Staged]) -> list[Staged]:
        cache.set_account(_openai(701, revision=5, name="newer"))  # type: ignore[arg-type]
        return index(bucket, version, staged)

    cache.accounts.index = racing  # type: ignore[method-assign]
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    assert len(drain()) == 1
    served = {a.id: a for a in cache.get_snapshot(FORCED) or []}
    assert served[701].name == "newer"


def test_an_index_entry_of_a_version_that_no_longer_lists_the_account_is_dropped(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    assert cache.set_snapshot(FORCED, [_openai(702)])  # type: ignore[list-item]
    key = cache.keys.account_buckets(701)
    assert redis_client.hget(key, str(FORCED)) is not None
    cache.set_account(_openai(701, revision=2))  # type: ignore[arg-type]
    assert redis_client.hget(key, str(FORCED)) is None
    assert _ids(cache, FORCED) == [702]


def test_a_losing_writers_index_entries_do_not_hide_the_active_version(
    cache: RedisSchedulerCache,
) -> None:
    """A writer that indexed its version and then lost leaves entries naming a version
    that is gone: a change still reaches the active one."""
    slow = cache.reserve_version(FORCED)
    fast = cache.reserve_version(FORCED)
    activate = cache.snapshots._activation

    def overtaken(*args: object) -> tuple[int, int]:
        cache.snapshots._activation = activate  # type: ignore[method-assign]
        assert cache.set_snapshot(FORCED, [_openai(701)], fast)  # type: ignore[list-item]
        return activate(*args)  # type: ignore[arg-type]

    cache.snapshots._activation = overtaken  # type: ignore[method-assign,assignment]
    assert not cache.set_snapshot(FORCED, [_openai(701)], slow)  # type: ignore[list-item]
    cache.set_account(_openai(701, revision=3, status="disabled"))  # type: ignore[arg-type]
    assert [a.status for a in cache.get_snapshot(FORCED) or []] == ["disabled"]
