"""Last use, locks, the registry, the outbox watermark and rebuild requests."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, cast

import pytest
import redis

from cache import CacheUnavailable, CorruptPayload, RedisSchedulerCache, SchedulerBucket
from cache.codec import to_ms
from cache.scripts import SCRIPT_NAMES, load_source
from tests.cache.factories import T0, account, accounts
from tests.support import RedisServer

BUCKET = SchedulerBucket.parse("12:anthropic:mixed")


def test_last_used_moves_forward_only(cache: RedisSchedulerCache) -> None:
    cache.set_snapshot(BUCKET, accounts(2), cache.reserve_version(BUCKET))
    assert cache.update_last_used({1: T0, 2: T0}) == 2
    assert cache.update_last_used({1: T0 - timedelta(seconds=5), 2: T0 + timedelta(seconds=5)}) == 1
    got = cache.get_snapshot(BUCKET)
    assert got is not None
    assert [a.last_used_at for a in got] == [T0, T0 + timedelta(seconds=5)]


def test_last_used_ignores_unknown_accounts(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    cache.set_account(account(1))
    assert cache.update_last_used({1: T0, 404: T0}) == 1
    assert redis_client.hget(cache.keys.last_used, "404") is None


def test_last_used_never_rewrites_the_payload(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    cache.set_account(account(1))
    before = redis_client.hget(cache.keys.accounts, "1")
    cache.update_last_used({1: T0})
    assert redis_client.hget(cache.keys.accounts, "1") == before
    got = cache.get_account(1)
    assert got is not None and got.last_used_at == T0


def test_payload_last_used_seeds_the_store_monotonically(cache: RedisSchedulerCache) -> None:
    cache.update_last_used({1: T0})
    cache.set_account(account(1, last_used_at=T0 + timedelta(seconds=1)))
    cache.set_account(account(1, revision=2, last_used_at=T0 - timedelta(hours=1)))
    got = cache.get_account(1)
    assert got is not None and got.last_used_at == T0 + timedelta(seconds=1)


def test_pending_last_used_is_acknowledged_without_losing_newer_touches(
    cache: RedisSchedulerCache,
) -> None:
    cache.set_account(account(1))
    cache.update_last_used({1: T0, 2: T0}, record_pending=True)
    pending = cache.pending_last_used()
    assert pending == {1: T0, 2: T0}
    cache.update_last_used({1: T0 + timedelta(seconds=3)}, record_pending=True)  # meanwhile
    assert cache.ack_pending_last_used(pending) == 1
    assert cache.pending_last_used() == {1: T0 + timedelta(seconds=3)}


def test_lock_is_fenced_by_its_token(cache: RedisSchedulerCache) -> None:
    token = cache.try_lock_bucket(BUCKET, 10)
    assert token is not None
    assert cache.try_lock_bucket(BUCKET, 10) is None
    assert not cache.unlock_bucket(BUCKET, "not-the-token")
    assert cache.unlock_bucket(BUCKET, token)
    assert cache.try_lock_bucket(BUCKET, 10) is not None


def test_expired_holder_cannot_unlock_the_next_holder(cache: RedisSchedulerCache) -> None:
    first = cache.try_lock_bucket(BUCKET, 0.05)
    assert first is not None
    time.sleep(0.1)  # the first holder outlives its TTL
    second = cache.try_lock_bucket(BUCKET, 10)
    assert second is not None
    assert not cache.unlock_bucket(BUCKET, first)
    assert cache.try_lock_bucket(BUCKET, 10) is None  # still held by the second
    assert cache.unlock_bucket(BUCKET, second)


def test_same_token_takes_its_lock_back(cache: RedisSchedulerCache) -> None:
    assert cache.try_lock_bucket(BUCKET, 10, token="task-1") == "task-1"
    assert cache.try_lock_bucket(BUCKET, 10, token="task-1") == "task-1"
    assert cache.try_lock_bucket(BUCKET, 10, token="task-2") is None


def test_named_locks(cache: RedisSchedulerCache) -> None:
    token = cache.try_lock("outbox-poller", 5)
    assert token is not None and cache.try_lock("outbox-poller", 5) is None
    assert cache.unlock("outbox-poller", token)
    with pytest.raises(ValueError, match="lock name"):
        cache.try_lock("bad name", 5)
    with pytest.raises(ValueError, match="ttl"):
        cache.try_lock("x", 0)


def test_registry_lists_buckets_and_skips_malformed_entries(
    cache: RedisSchedulerCache, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    other = SchedulerBucket.parse("0:openai:single")
    for bucket in (BUCKET, other):
        cache.set_snapshot(bucket, accounts(1), cache.reserve_version(bucket))
    redis_client.sadd(cache.keys.registry, "garbage", "1:x", "-2:openai:single")
    assert cache.list_buckets() == [other, BUCKET]
    assert "garbage" in caplog.text


def test_retired_bucket_misses_and_leaves_the_registry(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    first = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, accounts(2), first)
    assert cache.retire_bucket(BUCKET)
    assert cache.get_snapshot(BUCKET) is None
    assert cache.list_buckets() == []
    assert redis_client.ttl(cache.keys.snapshot(BUCKET, first)) > 0
    assert not cache.retire_bucket(BUCKET)
    # Reviving it still moves versions forward.
    assert cache.set_snapshot(BUCKET, accounts(1), cache.reserve_version(BUCKET))
    assert cache.bucket_info(BUCKET).active_version == 2


def test_watermark_only_advances(cache: RedisSchedulerCache) -> None:
    assert cache.get_outbox_watermark() == 0
    assert cache.set_outbox_watermark(10)
    assert not cache.set_outbox_watermark(7)
    assert not cache.set_outbox_watermark(10)
    assert cache.get_outbox_watermark() == 10


def test_outbox_gaps_are_kept_with_the_watermark(cache: RedisSchedulerCache) -> None:
    assert cache.advance_outbox(20, new_gaps=[14, 17])
    assert set(cache.outbox_gaps()) == {14, 17}
    assert not cache.advance_outbox(20, resolved_gaps=[14])
    assert set(cache.outbox_gaps()) == {17}


def test_rebuild_requests_coalesce(cache: RedisSchedulerCache) -> None:
    assert cache.request_rebuild(BUCKET)  # the first request enqueues
    assert not any(cache.request_rebuild(BUCKET) for _ in range(50))
    generation = cache.begin_rebuild(BUCKET)
    assert generation == 51
    assert cache.request_rebuild(BUCKET)  # arrived during the run: one more task
    assert not cache.request_rebuild(BUCKET)
    assert cache.finish_rebuild(BUCKET, generation) == 2
    follow_up = cache.begin_rebuild(BUCKET)
    assert follow_up == 53
    cache.finish_rebuild(BUCKET, follow_up)
    assert cache.begin_rebuild(BUCKET) is None  # duplicate delivery: nothing new
    assert cache.begin_rebuild(BUCKET, force=True) == 53


def test_every_script_works_after_script_flush(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    redis_client.script_flush()
    version = cache.reserve_version(BUCKET)
    assert cache.set_snapshot(BUCKET, accounts(2), version)
    assert cache.get_snapshot(BUCKET) is not None
    assert cache.set_account(account(1, revision=2))
    assert cache.place_account(BUCKET, account(3, revision=1), [2]).version == version
    assert cache.update_last_used({1: T0}, record_pending=True) == 1
    assert cache.ack_pending_last_used({1: T0}) == 1
    token = cache.try_lock_bucket(BUCKET, 5)
    assert token is not None and cache.unlock_bucket(BUCKET, token)
    assert cache.advance_outbox(3)
    assert cache.request_rebuild(BUCKET)
    generation = cache.begin_rebuild(BUCKET)
    assert generation is not None
    cache.finish_rebuild(BUCKET, generation)
    assert cache.delete_account(2)
    assert cache.retire_bucket(BUCKET)
    assert cache.reestablish(None, 3)
    cache.client.hset(cache.keys.accounts, "1", b"garbage")
    assert cache.forget_corrupt_payload(CorruptPayload("garbage", 1, b"garbage"))
    assert cache.wrong_type_keys(BUCKET, repair=True) == {}


def test_every_script_has_a_header_and_takes_keys_from_keys() -> None:
    for name in SCRIPT_NAMES:
        source = load_source(name)
        assert "-- KEYS[1] - " in source, name
        assert "-- returns " in source, name


def test_bucket_keys_share_the_bucket_hash_tag(cache: RedisSchedulerCache) -> None:
    keys = cache.keys
    bucket_keys = [
        keys.meta(BUCKET),
        keys.version_counter(BUCKET),
        keys.snapshot(BUCKET, 3),
        keys.lock(BUCKET),
        keys.rebuild_state(BUCKET),
    ]
    assert {k[k.index("{") : k.index("}") + 1] for k in bucket_keys} == {"{12:anthropic:mixed}"}


def test_prefix_is_configurable_and_validated(redis_client: redis.Redis) -> None:
    cache = RedisSchedulerCache(redis_client, prefix="{gw}")
    cache.set_snapshot(BUCKET, accounts(1), cache.reserve_version(BUCKET))
    assert all(k.startswith(b"{gw}:") for k in cast(list[bytes], redis_client.keys("*")))
    assert cache.get_snapshot(BUCKET) is not None
    with pytest.raises(ValueError, match="prefix"):
        RedisSchedulerCache(redis_client, prefix="bad prefix")


def test_stats(cache: RedisSchedulerCache) -> None:
    cache.record_stats({"rebuilds": 2}, {"last_poll": "x"})
    cache.record_stats({"rebuilds": 1})
    assert cache.stats() == {"rebuilds": "3", "last_poll": "x"}


def test_redis_stopped_mid_test_is_unavailable_not_a_hang(private_redis: RedisServer) -> None:
    cache = RedisSchedulerCache.from_url(private_redis.url, socket_timeout=1.0)
    cache.set_snapshot(BUCKET, accounts(2), cache.reserve_version(BUCKET))
    private_redis.stop()
    started = time.monotonic()
    for call in (
        lambda: cache.get_snapshot(BUCKET),
        lambda: cache.reserve_version(BUCKET),
        lambda: cache.update_last_used({1: T0}),
        lambda: cache.try_lock_bucket(BUCKET, 5),
        lambda: cache.list_buckets(),
    ):
        with pytest.raises(CacheUnavailable, match="redis unavailable"):
            call()
    assert time.monotonic() - started < 60
    private_redis.start()
    assert cache.get_snapshot(BUCKET) is None  # a restarted, empty server is a miss
    assert cache.set_snapshot(BUCKET, accounts(1), cache.reserve_version(BUCKET))


def test_time_is_stored_in_milliseconds() -> None:
    assert to_ms(T0) == 1767268800000


def test_every_script_keeps_to_one_cluster_slot(
    cache: RedisSchedulerCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    from redis.commands.core import Script
    from redis.crc import key_slot

    calls: list[list[str]] = []
    call = Script.__call__

    def recording(self: Script, keys: list[str], args: Any = None, client: Any = None) -> Any:
        calls.append(list(keys))
        return call(self, keys=keys, args=args, client=client)

    monkeypatch.setattr(Script, "__call__", recording)
    test_every_script_works_after_script_flush(cache, cache.client)
    assert calls
    for keys in calls:
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys


def test_a_lost_queued_task_holds_its_bucket_only_for_its_lease(
    cache: RedisSchedulerCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("cache.rebuilds.REBUILD_LEASE_SECONDS", 0.2)
    assert cache.request_rebuild(BUCKET)  # its task is then lost with its worker
    assert not cache.request_rebuild(BUCKET)  # within the lease: coalesced
    sent: list[SchedulerBucket] = []
    assert cache.reclaim_rebuilds(sent.append) == 0  # not expired yet
    time.sleep(0.3)
    assert cache.reclaim_rebuilds(sent.append) == 1 and sent == [BUCKET]
    assert not cache.request_rebuild(BUCKET)  # the re-sent task holds a new lease
    time.sleep(0.3)
    assert cache.request_rebuild(BUCKET)  # a request after it expires enqueues again
    generation = cache.begin_rebuild(BUCKET)
    assert generation is not None
    cache.finish_rebuild(BUCKET, generation)
    time.sleep(0.3)
    assert cache.reclaim_rebuilds(sent.append) == 0  # settled: its lease is forgotten
    assert cache.client.zcard(cache.keys.rebuild_leases) == 0
