"""The bucket lock's keeper against a real Redis: renewed while held, never after."""

from __future__ import annotations

import time

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.worker.bucket_lock import LockKeeper

BUCKET = SchedulerBucket(7, "openai", "single")
# Short, so the test sees several renewals in about a second.
LEASE = 0.3


def test_a_held_lock_outlives_its_lease_and_is_not_renewed_once_released(
    cache: RedisSchedulerCache,
) -> None:
    keeper = LockKeeper()
    key = cache.keys.lock(BUCKET)
    token = cache.try_lock_bucket(BUCKET, LEASE, token="holder")
    assert token == "holder"
    with keeper.held(cache, BUCKET, token, longest=10, lease=LEASE):
        time.sleep(LEASE * 3)
        assert cache.client.get(key) == b"holder"
    assert cache.unlock_bucket(BUCKET, token)
    time.sleep(LEASE)  # a renewal that raced the release would show by now
    assert cache.try_lock_bucket(BUCKET, LEASE, token="next") == "next"


def test_a_lock_is_kept_no_longer_than_the_longest_hold(cache: RedisSchedulerCache) -> None:
    keeper = LockKeeper()
    token = cache.try_lock_bucket(BUCKET, LEASE, token="holder")
    assert token is not None
    with keeper.held(cache, BUCKET, token, longest=LEASE * 2, lease=LEASE):
        time.sleep(LEASE * 4)
        # Past the longest hold: the lock expired, as a hard time limit's kill would find.
        assert cache.try_lock_bucket(BUCKET, LEASE, token="next") == "next"


def test_a_lock_taken_over_is_given_up_not_fought_for(cache: RedisSchedulerCache) -> None:
    keeper = LockKeeper()
    key = cache.keys.lock(BUCKET)
    token = cache.try_lock_bucket(BUCKET, LEASE, token="holder")
    assert token is not None
    with keeper.held(cache, BUCKET, token, longest=10, lease=LEASE):
        cache.client.set(key, "other", px=10_000)  # its lease ran out and another took it
        time.sleep(LEASE)
        assert cache.client.get(key) == b"other"
