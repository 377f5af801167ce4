"""One process never serves an account at a revision older than one it served, in any
bucket: buckets change one at a time (a move between groups is a removal in one and an
insert in the other), and a near cache holds each bucket as its own read."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cache import NearCache, RedisSchedulerCache, SchedulerBucket
from tests.cache.factories import T0, account

OLD = SchedulerBucket.parse("21:openai:single")
NEW = SchedulerBucket.parse("22:openai:single")


def _ids(near: NearCache, bucket: SchedulerBucket) -> dict[int, int | None]:
    return {a.id: a.revision for a in near.list_schedulable(bucket, T0) or []}


@pytest.mark.parametrize("decoded", [True, False], ids=["decoded", "rows"])
def test_a_bucket_behind_another_drops_the_older_revision_until_it_catches_up(
    cache: RedisSchedulerCache, near_cache: Callable[..., NearCache], decoded: bool
) -> None:
    both = account(5, platform="openai", group_ids=(21, 22), revision=1)
    other = account(6, platform="openai", group_ids=(21,), revision=1)
    assert cache.set_snapshot(OLD, [both, other])
    assert cache.set_snapshot(NEW, [both])
    # Long trust, no check: only reads and pushes move what is held.
    near = near_cache(check_seconds=30, trust_seconds=60, max_decoded=1_000 if decoded else 0)
    assert _ids(near, OLD) == {5: 1, 6: 1}
    assert _ids(near, NEW) == {5: 1}

    # Account 5 leaves group 21 at revision 2: the new group's bucket has it first.
    moved = account(5, platform="openai", group_ids=(22,), revision=2)
    assert cache.set_snapshot(NEW, [moved])
    near.check()
    assert _ids(near, NEW) == {5: 2}
    # The old group's bucket has not changed yet: it must not serve revision 1 now.
    assert _ids(near, OLD) == {6: 1}

    # A read of the old bucket that is still behind leaves it out too.
    near.check([str(OLD)])
    cache.client.hincrby(cache.keys.meta(OLD), "gen", 1)
    near.check()
    assert _ids(near, OLD) == {6: 1}

    # Its own change arrives: what it says is served.
    assert cache.set_snapshot(
        OLD, [account(5, platform="openai", group_ids=(21, 22), revision=3), other]
    )
    near.check()
    assert _ids(near, OLD) == {5: 3, 6: 1}
    assert _ids(near, NEW) == {}
