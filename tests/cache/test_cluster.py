"""The cache's contract on a real 3-master Redis Cluster, with the default key prefix."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from cache import CacheUnavailable, RedisSchedulerCache, SchedulerBucket
from tests.cache.factories import accounts
from tests.topologies import RedisClusterServers, started

pytestmark = pytest.mark.slow

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    with started(RedisClusterServers()) as servers:
        yield servers


@pytest.fixture
def cache(cluster: RedisClusterServers) -> Iterator[RedisSchedulerCache]:
    built = RedisSchedulerCache.from_url(cluster.url, cluster=True)
    built.client.flushall()
    try:
        yield built
    finally:
        built.client.close()


def buckets(count: int) -> list[SchedulerBucket]:
    return [SchedulerBucket(group, "openai", "single") for group in range(1, count + 1)]


def test_snapshots_are_written_activated_and_read(cache: RedisSchedulerCache) -> None:
    for bucket in buckets(20):
        version = cache.reserve_version(bucket)
        assert cache.set_snapshot(bucket, accounts(5, start=bucket.group_id * 10), version)
        got = cache.get_snapshot(bucket)
        assert got is not None and [a.id for a in got][:1] == [bucket.group_id * 10]
        assert cache.bucket_info(bucket).account_count == 5
    assert set(cache.list_buckets()) == set(buckets(20))


def test_a_newer_reserved_version_wins_on_a_cluster(cache: RedisSchedulerCache) -> None:
    bucket = buckets(1)[0]
    slow, fast = cache.reserve_version(bucket), cache.reserve_version(bucket)
    assert cache.set_snapshot(bucket, accounts(2, start=1), fast)
    assert not cache.set_snapshot(bucket, accounts(3, start=1), slow)
    assert len(cache.get_snapshot(bucket) or []) == 2


def test_accounts_and_last_use_are_kept_per_account(cache: RedisSchedulerCache) -> None:
    bucket = buckets(1)[0]
    cache.set_snapshot(bucket, accounts(3, start=1), cache.reserve_version(bucket))
    assert cache.update_last_used({1: T0, 2: T0}, record_pending=True) == 2
    assert cache.update_last_used({1: T0 - timedelta(seconds=1)}) == 0
    assert set(cache.pending_last_used()) == {1, 2}
    cache.ack_pending_last_used({1: T0, 2: T0})
    assert cache.pending_last_used() == {}
    fresh = accounts(1, start=1)[0].model_copy(update={"revision": 99, "priority": 7})
    assert cache.set_account(fresh)
    assert (cache.get_account(1) or fresh).priority == 7
    assert cache.delete_account(1, 100)
    assert cache.get_account(1) is None


def test_locks_rebuild_requests_and_the_outbox_watermark(cache: RedisSchedulerCache) -> None:
    bucket = buckets(1)[0]
    token = cache.try_lock_bucket(bucket, 5)
    assert token is not None and cache.try_lock_bucket(bucket, 5) is None
    assert cache.unlock_bucket(bucket, token)
    assert cache.try_lock("poller", 5, token="t") == "t"
    assert cache.request_rebuild(bucket) and not cache.request_rebuild(bucket)
    generation = cache.begin_rebuild(bucket)
    assert generation is not None
    cache.finish_rebuild(bucket, generation)
    cache.advance_outbox(10, new_gaps=[4], resolved_gaps=[])
    assert cache.get_outbox_watermark() == 10 and set(cache.outbox_gaps()) == {4}
    cache.record_stats({"rebuilds": 2})
    assert cache.stats()["rebuilds"] == "2"


def test_a_retired_bucket_misses(cache: RedisSchedulerCache) -> None:
    bucket = buckets(1)[0]
    cache.set_snapshot(bucket, accounts(2, start=1), cache.reserve_version(bucket))
    assert cache.retire_bucket(bucket)
    assert cache.get_snapshot(bucket) is None and bucket not in cache.list_buckets()


def test_a_cluster_that_is_gone_is_cache_unavailable(cluster: RedisClusterServers) -> None:
    built = RedisSchedulerCache.from_url(cluster.url, cluster=True, socket_timeout=1.0)
    for node in cluster.nodes:
        node.stop()
    try:
        with pytest.raises(CacheUnavailable):
            built.get_snapshot(buckets(1)[0])
    finally:
        for node in cluster.nodes:
            node.start()
        built.client.close()
