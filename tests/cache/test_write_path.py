"""A change reaches every snapshot version that lists the account, with one push per
bucket whose active version changed (docs/write-path.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from cache import RedisSchedulerCache, SchedulerBucket
from cache.accounts import Keeps, Staged
from tests.cache.factories import account

FORCED = SchedulerBucket.parse("7:openai:forced")
SINGLE = SchedulerBucket.parse("12:openai:single")


def _openai(account_id: int, **changes: object) -> object:
    return account(account_id, **{"platform": "openai", "group_ids": (), **changes})


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

    def racing(
        bucket: SchedulerBucket, version: int, staged: list[Staged], keeps: Keeps | None = None
    ) -> list[Staged]:
        cache.set_account(_openai(701, revision=5, name="newer"))  # type: ignore[arg-type]
        return index(bucket, version, staged, keeps)

    cache.accounts.index = racing  # type: ignore[method-assign]
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    assert len(drain()) == 1
    served = {a.id: a for a in cache.get_snapshot(FORCED) or []}
    assert served[701].name == "newer"


def test_a_change_while_a_new_bucket_is_written_keeps_the_account_indexed(
    cache: RedisSchedulerCache,
) -> None:
    """A change that reaches a staged version of a bucket with no active one keeps the
    entry: the next refresh does not index the account again (it is not new)."""
    index = cache.accounts.index

    def racing(
        bucket: SchedulerBucket, version: int, staged: list[Staged], keeps: Keeps | None = None
    ) -> list[Staged]:
        found = index(bucket, version, staged, keeps)
        cache.set_account(_openai(701, revision=5, name="newer"))  # type: ignore[arg-type]
        return found

    cache.accounts.index = racing  # type: ignore[method-assign]
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    cache.accounts.index = index  # type: ignore[method-assign]
    assert cache.set_snapshot(FORCED, [_openai(701, revision=5, name="newer"), _openai(702)])  # type: ignore[list-item]
    cache.set_account(_openai(701, revision=6, name="newest"))  # type: ignore[arg-type]
    assert {a.id: a.name for a in cache.get_snapshot(FORCED) or []}[701] == "newest"


def test_an_index_entry_of_a_version_that_no_longer_lists_the_account_is_dropped(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    key = cache.keys.account_buckets(701)
    assert redis_client.hget(key, str(FORCED)) is not None
    assert cache.set_snapshot(FORCED, [_openai(702)])  # type: ignore[list-item]
    assert redis_client.hget(key, str(FORCED)) is None
    cache.set_account(_openai(701, revision=2))  # type: ignore[arg-type]
    assert _ids(cache, FORCED) == [702]


def test_only_accounts_new_to_the_bucket_are_indexed(cache: RedisSchedulerCache) -> None:
    """The index costs what changed: an unchanged refresh writes no entry."""
    indexed: list[str] = []
    index = cache.accounts.index

    def counted(
        bucket: SchedulerBucket, version: int, staged: list[Staged], keeps: Keeps | None = None
    ) -> list[Staged]:
        indexed.extend(s.id for s in staged)
        return index(bucket, version, staged, keeps)

    cache.accounts.index = counted  # type: ignore[method-assign]
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    assert sorted(indexed) == ["701", "702"]
    indexed.clear()
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    assert indexed == []
    assert cache.set_snapshot(FORCED, [_openai(702), _openai(703)])  # type: ignore[list-item]
    assert indexed == ["703"]
    cache.set_account(_openai(703, revision=2, name="later"))  # type: ignore[arg-type]
    assert {a.id: a.name for a in cache.get_snapshot(FORCED) or []}[703] == "later"


def test_a_change_just_before_activation_reaches_the_new_version(
    cache: RedisSchedulerCache,
) -> None:
    """An account the bucket listed already is not indexed for the new version: a change
    stored after the writer's last check, before its activation, reached only the old
    version. The writer finds it in the store after activating and puts it in."""
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    activate = cache.snapshots._activation

    def changed_first(*args: object) -> tuple[int, int]:
        cache.snapshots._activation = activate  # type: ignore[method-assign]
        assert cache.set_account(_openai(701, revision=4, name="late"))  # type: ignore[arg-type]
        return activate(*args)  # type: ignore[arg-type]

    cache.snapshots._activation = changed_first  # type: ignore[method-assign,assignment]
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    served = {a.id: a for a in cache.get_snapshot(FORCED) or []}
    assert served[701].name == "late" and served[701].revision == 4


def test_accounts_are_indexed_again_when_another_version_was_activated_meanwhile(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    """v1 lists 701; v3 is staged carrying 701 over (not indexing it); v2, which does not
    list 701, activates first and drops its entry; v3 then activates: 701 is indexed
    again, so a change reaches v3."""
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)])  # type: ignore[list-item]
    middle = cache.reserve_version(FORCED)
    last = cache.reserve_version(FORCED)
    activate = cache.snapshots._activation

    def overtaken(*args: object) -> tuple[int, int]:
        cache.snapshots._activation = activate  # type: ignore[method-assign]
        assert cache.set_snapshot(FORCED, [_openai(702)], middle)  # type: ignore[list-item]
        assert redis_client.hget(cache.keys.account_buckets(701), str(FORCED)) is None
        return activate(*args)  # type: ignore[arg-type]

    cache.snapshots._activation = overtaken  # type: ignore[method-assign,assignment]
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)], last)  # type: ignore[list-item]
    cache.set_account(_openai(701, revision=3, status="disabled"))  # type: ignore[arg-type]
    served = {a.id: a for a in cache.get_snapshot(FORCED) or []}
    assert served[701].status == "disabled"


def test_a_writer_holding_a_version_number_reused_after_a_state_loss_keeps_off_it(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    """Redis loses its state while a rebuild holds v1; the counter starts again and
    another rebuild reserves and activates v1 too. The first one loses (v1 is not newer
    than the active v1) and must not unlink the keys: they are the active version's, and
    the bucket would be served empty until its next rebuild."""
    held = cache.reserve_version(FORCED)
    redis_client.flushall()
    again = cache.reserve_version(FORCED)
    assert held == again == 1
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)], again)  # type: ignore[list-item]
    assert not cache.set_snapshot(FORCED, [_openai(701)], held)  # type: ignore[list-item]
    assert _ids(cache, FORCED) == [701, 702]


def test_a_writer_does_not_append_to_a_version_another_writer_staged(
    cache: RedisSchedulerCache,
) -> None:
    """The same reuse, both staging before either activates: the second to stage is
    refused rather than mixing its ids into the first one's list."""
    held = cache.reserve_version(FORCED)
    cache.client.flushall()
    again = cache.reserve_version(FORCED)
    activate = cache.snapshots._activation

    def other_writer_first(*args: object) -> tuple[int, int]:
        cache.snapshots._activation = activate  # type: ignore[method-assign]
        assert not cache.set_snapshot(FORCED, [_openai(703)], held)  # type: ignore[list-item]
        return activate(*args)  # type: ignore[arg-type]

    cache.snapshots._activation = other_writer_first  # type: ignore[method-assign,assignment]
    assert cache.set_snapshot(FORCED, [_openai(701), _openai(702)], again)  # type: ignore[list-item]
    assert _ids(cache, FORCED) == [701, 702]


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


def _in_group(group: int) -> Keeps:
    return lambda a: group in a.group_ids


def _move_701(cache: RedisSchedulerCache) -> None:
    """Account 701 moves from group 12 to 13 (revision 2), as the outbox applies it."""
    moved = _openai(701, revision=2, group_ids=(13,))
    cache.set_account(moved, {SchedulerBucket.parse("13:openai:single")})  # type: ignore[arg-type]


def _move_701_when_indexing(cache: RedisSchedulerCache) -> None:
    """The move happens while the next writer indexes its version."""
    index = cache.accounts.index

    def racing(
        bucket: SchedulerBucket, version: int, staged: list[Staged], keeps: Keeps | None = None
    ) -> list[Staged]:
        _move_701(cache)
        return index(bucket, version, staged, keeps)

    cache.accounts.index = racing  # type: ignore[method-assign]


def test_a_move_out_of_the_bucket_during_a_write_is_a_removal_in_the_new_version(
    cache: RedisSchedulerCache,
) -> None:
    """The writer read account 701 in group 12; before it indexed, 701 moved to group 13.
    The store's newer revision is not put into the group 12 version: a removal is."""
    first = _openai(701, group_ids=(12,))
    assert cache.set_snapshot(SINGLE, [_openai(702, group_ids=(12,))])  # type: ignore[list-item]
    _move_701_when_indexing(cache)
    written = [first, _openai(702, group_ids=(12,))]
    assert cache.set_snapshot(SINGLE, written, belongs=_in_group(12))  # type: ignore[arg-type]
    assert _ids(cache, SINGLE) == [702]


def test_a_move_out_of_a_listed_account_during_a_write_is_a_removal(
    cache: RedisSchedulerCache,
) -> None:
    """Account 701 is listed already (indexed for the active version only): the move
    reaches the active version as a removal, and the new version takes the removal
    from the store's newer revision instead of the moved payload."""
    both = [_openai(701, group_ids=(12,)), _openai(702, group_ids=(12,))]
    assert cache.set_snapshot(SINGLE, both)  # type: ignore[arg-type]
    _move_701_when_indexing(cache)
    assert cache.set_snapshot(SINGLE, both, belongs=_in_group(12))  # type: ignore[arg-type]
    assert _ids(cache, SINGLE) == [702]


def test_a_move_out_just_before_activation_is_a_removal_after_it(
    cache: RedisSchedulerCache,
) -> None:
    """The late path: the move is stored after the writer's last check; the writer
    finds it in the store after activating and puts in a removal, not the payload."""
    both = [_openai(701, group_ids=(12,)), _openai(702, group_ids=(12,))]
    assert cache.set_snapshot(SINGLE, both)  # type: ignore[arg-type]
    activate = cache.snapshots._activation

    def moved_first(*args: object) -> tuple[int, int]:
        cache.snapshots._activation = activate  # type: ignore[method-assign]
        _move_701(cache)
        return activate(*args)  # type: ignore[arg-type]

    cache.snapshots._activation = moved_first  # type: ignore[method-assign,assignment]
    assert cache.set_snapshot(SINGLE, both, belongs=_in_group(12))  # type: ignore[arg-type]
    assert _ids(cache, SINGLE) == [702]
