from __future__ import annotations

import logging
from datetime import timedelta

import pytest
import redis

from cache import Account, CorruptPayload, RedisSchedulerCache, SchedulerBucket, VersionNotReserved
from tests.cache.factories import T0, account, accounts

BUCKET = SchedulerBucket.parse("12:anthropic:mixed")


def test_snapshot_round_trip_keeps_order(cache: RedisSchedulerCache) -> None:
    written = [account(i) for i in (5, 3, 9, 1)]
    assert cache.set_snapshot(BUCKET, written, cache.reserve_version(BUCKET))
    got = cache.get_snapshot(BUCKET)
    assert got is not None
    assert [a.id for a in got] == [5, 3, 9, 1]
    assert got == written


def test_miss_before_any_snapshot(cache: RedisSchedulerCache) -> None:
    assert cache.get_snapshot(BUCKET) is None


def test_empty_snapshot_is_a_miss(cache: RedisSchedulerCache) -> None:
    assert cache.set_snapshot(BUCKET, [], cache.reserve_version(BUCKET))
    assert cache.get_snapshot(BUCKET) is None
    assert cache.bucket_info(BUCKET).active_version == 1


def test_a_deleted_account_is_skipped_not_a_miss(cache: RedisSchedulerCache) -> None:
    # A miss would send readers to the source until the next rebuild; the version is
    # still right about every other account.
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    cache.delete_account(2)
    assert [a.id for a in cache.get_snapshot(BUCKET) or []] == [1, 3]


def test_missing_payload_is_a_miss(cache: RedisSchedulerCache, redis_client: redis.Redis) -> None:
    version = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, accounts(3), version)
    redis_client.hdel(cache.keys.payloads(BUCKET, version), "2")
    assert cache.get_snapshot(BUCKET) is None


def test_corrupt_payload_is_a_logged_miss(
    cache: RedisSchedulerCache, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    version = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, accounts(3), version)
    redis_client.hset(cache.keys.payloads(BUCKET, version), "2", b"{not json")
    with caplog.at_level(logging.WARNING, logger="cache"):
        assert cache.get_snapshot(BUCKET) is None
    assert "account 2" in caplog.text
    assert "not json" in caplog.text


def test_payload_of_another_account_is_corrupt(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    version = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, accounts(2), version)
    payloads = cache.keys.payloads(BUCKET, version)
    redis_client.hset(payloads, "2", redis_client.hget(payloads, "1"))
    assert cache.get_snapshot(BUCKET) is None


def test_newest_reserved_version_wins_whatever_the_write_order(cache: RedisSchedulerCache) -> None:
    slow = cache.reserve_version(BUCKET)  # reserved first: read the older data
    fast = cache.reserve_version(BUCKET)
    assert cache.set_snapshot(BUCKET, accounts(2, revision=2), fast)
    assert not cache.set_snapshot(BUCKET, accounts(3, revision=1), slow)
    got = cache.get_snapshot(BUCKET)
    assert got is not None and [a.id for a in got] == [1, 2]
    assert cache.bucket_info(BUCKET).active_version == fast


def test_losing_writer_changes_nothing(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    slow = cache.reserve_version(BUCKET)
    fast = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, [account(1, name="new", revision=1)], fast)
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    assert not cache.set_snapshot(BUCKET, [account(1, name="old", revision=1), account(7)], slow)
    after = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    assert before == after
    # No key without a TTL is left behind except the bucket's permanent ones.
    assert not redis_client.exists(cache.keys.snapshot(BUCKET, slow))


def test_same_version_twice_is_refused(cache: RedisSchedulerCache) -> None:
    version = cache.reserve_version(BUCKET)
    assert cache.set_snapshot(BUCKET, accounts(1), version)
    assert not cache.set_snapshot(BUCKET, accounts(2), version)


def test_unreserved_version_is_an_error(cache: RedisSchedulerCache) -> None:
    with pytest.raises(VersionNotReserved, match="version 5"):
        cache.set_snapshot(BUCKET, accounts(1), 5)
    with pytest.raises(VersionNotReserved, match="version 0"):
        cache.set_snapshot(BUCKET, accounts(1), 0)


def test_duplicate_account_in_a_snapshot_is_an_error(cache: RedisSchedulerCache) -> None:
    with pytest.raises(ValueError, match="account 1 appears twice"):
        cache.set_snapshot(BUCKET, [account(1), account(1)], cache.reserve_version(BUCKET))


def test_replaced_snapshot_expires_after_the_grace_period(
    redis_client: redis.Redis,
) -> None:
    cache = RedisSchedulerCache(redis_client, snapshot_grace_seconds=45)
    first = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, accounts(2), first)
    assert redis_client.ttl(cache.keys.snapshot(BUCKET, first)) == -1
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    assert 40 <= redis_client.ttl(cache.keys.snapshot(BUCKET, first)) <= 45
    assert redis_client.lrange(cache.keys.snapshot(BUCKET, first), 0, -1) == [b"1", b"2"]


def test_set_snapshot_never_replaces_a_newer_payload(cache: RedisSchedulerCache) -> None:
    version = cache.reserve_version(BUCKET)
    assert cache.set_account(account(1, status="disabled", revision=5))
    cache.set_snapshot(BUCKET, [account(1, revision=4), account(2)], version)
    got = cache.get_snapshot(BUCKET)
    assert got is not None
    assert got[0].status == "disabled" and got[0].revision == 5


def test_set_account_is_seen_by_snapshot_readers_at_once(cache: RedisSchedulerCache) -> None:
    cache.set_snapshot(BUCKET, accounts(2), cache.reserve_version(BUCKET))
    limited = account(2, revision=2, rate_limit_reset_at=T0 + timedelta(minutes=1))
    assert cache.set_account(limited)
    got = cache.get_snapshot(BUCKET)
    assert got is not None and got[1] == limited


def test_bucket_info(cache: RedisSchedulerCache) -> None:
    version = cache.reserve_version(BUCKET)
    cache.set_snapshot(BUCKET, accounts(4), version, rebuild_ms=12.5)
    info = cache.bucket_info(BUCKET)
    assert (info.active_version, info.reserved_version, info.account_count) == (1, 1, 4)
    assert info.rebuild_ms == 12.5 and info.built_at is not None
    empty = cache.bucket_info(SchedulerBucket.parse("1:openai:single"))
    assert empty.active_version is None and empty.account_count == 0


def test_secret_credentials_stay_out_of_redis(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    secret = account(1, credentials={"api_key": "sk-123", "refresh_token": "rt", "base_url": "u"})
    cache.set_snapshot(BUCKET, [secret], cache.reserve_version(BUCKET))
    stored = redis_client.hget(cache.keys.accounts, "1")
    assert stored is not None and b"sk-123" not in stored and b"refresh_token" not in stored
    got = cache.get_snapshot(BUCKET)
    assert got is not None and got[0].credentials == {"base_url": "u"}


def test_cached_credentials_are_configurable(redis_client: redis.Redis) -> None:
    cache = RedisSchedulerCache(redis_client, cached_credentials={"api_key"})
    cache.set_account(account(1, credentials={"api_key": "k", "base_url": "u"}))
    got = cache.get_account(1)
    assert got is not None and got.credentials == {"api_key": "k"}


def test_decoded_accounts_are_reused_until_the_payload_changes(cache: RedisSchedulerCache) -> None:
    cache.set_snapshot(BUCKET, accounts(2), cache.reserve_version(BUCKET))
    first = cache.get_snapshot(BUCKET)
    second = cache.get_snapshot(BUCKET)
    assert first is not None and second is not None
    assert first[0] is second[0]
    cache.set_account(account(1, name="renamed", revision=2))
    third = cache.get_snapshot(BUCKET)
    assert third is not None and third[0].name == "renamed" and third[1] is first[1]


def test_many_accounts_beyond_one_script_chunk(cache: RedisSchedulerCache) -> None:
    big = accounts(9000)
    assert cache.set_snapshot(BUCKET, big, cache.reserve_version(BUCKET))
    got = cache.get_snapshot(BUCKET)
    assert got is not None and [a.id for a in got] == [a.id for a in big]


def test_account_get_set_delete(cache: RedisSchedulerCache) -> None:
    assert cache.get_account(1) is None
    assert cache.set_account(account(1, revision=3))
    assert not cache.set_account(account(1, name="stale", revision=2))
    assert cache.set_account(account(1, name="same revision again", revision=3))
    got = cache.get_account(1)
    assert got is not None and got.name == "same revision again"
    assert not cache.delete_account(1, revision=2)  # the stored payload is newer
    assert cache.delete_account(1, revision=3)
    assert cache.get_account(1) is None


def test_unversioned_payload_never_replaces_a_versioned_one(cache: RedisSchedulerCache) -> None:
    cache.set_account(account(1, revision=1))
    assert not cache.set_account(account(1, name="unversioned", revision=None))
    assert cache.set_account(account(2, revision=None))


def test_get_account_of_corrupt_payload_names_it(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    from cache import CorruptPayload

    redis_client.hset(cache.keys.accounts, "4", b'{"id": 4}')
    with pytest.raises(CorruptPayload, match="account 4"):
        cache.get_account(4)


def test_accounts_are_models(cache: RedisSchedulerCache) -> None:
    cache.set_account(account(1))
    assert isinstance(cache.get_account(1), Account)


def test_unchanged_rebuild_keeps_readers_decoded_accounts(cache: RedisSchedulerCache) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    first = cache.get_snapshot(BUCKET)
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))  # same data
    second = cache.get_snapshot(BUCKET)
    assert first is not None and second is not None
    assert all(a is b for a, b in zip(first, second, strict=True))


def test_reordered_snapshot_is_read_in_its_new_order(cache: RedisSchedulerCache) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    assert cache.get_snapshot(BUCKET) is not None
    cache.set_snapshot(BUCKET, accounts(3)[::-1], cache.reserve_version(BUCKET))
    got = cache.get_snapshot(BUCKET)
    assert got is not None and [a.id for a in got] == [3, 2, 1]


def test_a_touch_renews_only_the_touched_account(cache: RedisSchedulerCache) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    before = cache.get_snapshot(BUCKET)
    cache.update_last_used({2: T0})
    after = cache.get_snapshot(BUCKET)
    assert before is not None and after is not None
    assert after[0] is before[0] and after[2] is before[2]
    assert after[1].last_used_at == T0 and before[1].last_used_at is None


def test_changes_by_another_process_reach_a_warm_reader(redis_client: redis.Redis) -> None:
    reader = RedisSchedulerCache(redis_client)
    writer = RedisSchedulerCache(redis_client)
    writer.set_snapshot(BUCKET, accounts(2), writer.reserve_version(BUCKET))
    assert reader.get_snapshot(BUCKET) is not None
    writer.set_account(account(2, revision=2, status="disabled"))
    got = reader.get_snapshot(BUCKET)
    assert got is not None and got[1].status == "disabled"
    # Same revision, new content (a source that did not bump it): still seen.
    writer.set_account(account(2, revision=2, status="error"))
    got = reader.get_snapshot(BUCKET)
    assert got is not None and got[1].status == "error"


def test_client_must_return_bytes(redis_url: str) -> None:
    with pytest.raises(ValueError, match="decode_responses=False"):
        RedisSchedulerCache(redis.Redis.from_url(redis_url, decode_responses=True))


def test_deleted_account_is_not_written_back_by_a_rebuild_that_read_it(
    cache: RedisSchedulerCache,
) -> None:
    version = cache.reserve_version(BUCKET)  # a rebuild reads account 2 at revision 4 ...
    read = [account(1), account(2, revision=4)]
    cache.set_account(account(2, revision=4))
    assert cache.delete_account(2)  # ... the account is deleted meanwhile ...
    assert cache.set_snapshot(BUCKET, read, version)  # ... and the rebuild lands
    assert cache.get_account(2) is None
    assert [a.id for a in cache.get_snapshot(BUCKET) or []] == [1]  # skipped, no miss
    assert not cache.set_account(account(2, revision=4))
    assert cache.update_last_used({2: T0}) == 0
    assert cache.set_account(account(2, revision=5))  # undeleted in the source
    assert cache.get_snapshot(BUCKET) is not None


def test_a_corrupt_payload_is_repaired_by_the_next_rebuild_of_any_bucket_holding_it(
    cache: RedisSchedulerCache,
) -> None:
    other = SchedulerBucket.parse("12:anthropic:single")
    first, second = accounts(2)
    assert cache.set_snapshot(BUCKET, [first, second])
    assert cache.set_snapshot(other, [first])
    active = cache.bucket_info(BUCKET).active_version
    assert active is not None
    cache.client.hset(cache.keys.payloads(BUCKET, active), str(first.id), b'{"id": garbage')
    cache.client.hset(cache.keys.accounts, str(first.id), b'{"id": garbage')

    assert cache.get_snapshot(BUCKET) is None  # the readers' copy: a miss, logged
    with pytest.raises(CorruptPayload):
        cache.get_account(first.id)  # the store's copy: found, and marked for replacing
    assert cache.set_snapshot(other, [first])  # a rebuild of another bucket, same account
    assert cache.get_account(first.id) == first
    assert cache.set_snapshot(BUCKET, [first, second])  # the bucket's own next rebuild
    repaired = cache.get_snapshot(BUCKET)
    assert repaired is not None and [a.id for a in repaired] == [first.id, second.id]


def test_a_corrupt_payload_found_by_get_account_is_replaced_by_set_account(
    cache: RedisSchedulerCache,
) -> None:
    first = account(1)
    cache.set_account(first)
    cache.client.hset(cache.keys.accounts, "1", b"[]")
    with pytest.raises(CorruptPayload):
        cache.get_account(1)
    cache.set_account(first)
    assert cache.get_account(1) == first
