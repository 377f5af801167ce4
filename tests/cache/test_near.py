"""The near cache: served from memory, told of changes by a push, bounded by a check."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import redis

from cache import NearCache, RedisSchedulerCache, SchedulerBucket
from tests.cache.factories import T0, account, accounts
from tests.support import RedisServer

BUCKET = SchedulerBucket.parse("12:anthropic:mixed")
NearFactory = Callable[..., NearCache]


def commands(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


def wait_until(condition: Callable[[], bool], seconds: float) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.002)
    return time.monotonic() - started


def names(near: NearCache) -> list[str] | None:
    got = near.get_snapshot(BUCKET)
    return None if got is None else [a.name for a in got]


def test_reads_are_served_from_memory(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory
) -> None:
    cache.set_snapshot(BUCKET, accounts(50), cache.reserve_version(BUCKET))
    near = near_cache(background=False)
    first = near.list_schedulable(BUCKET, T0)
    before = commands(redis_client)
    for _ in range(200):
        assert near.list_schedulable(BUCKET, T0) == first
    assert commands(redis_client) - before <= 1  # the INFO call itself


def test_a_new_version_is_pushed_to_readers(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    near = near_cache(check_seconds=5, trust_seconds=10)
    assert names(near) == ["acct-1", "acct-2", "acct-3"]
    wait_until(lambda: near._thread is not None, 2)
    time.sleep(0.2)  # subscribed
    cache.set_snapshot(BUCKET, accounts(2, name="new"), cache.reserve_version(BUCKET))
    assert wait_until(lambda: names(near) == ["new", "new"], 1) < 0.5


def test_a_changed_account_is_pushed_to_readers(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    near = near_cache(check_seconds=5, trust_seconds=10)
    assert near.get_snapshot(BUCKET) is not None
    time.sleep(0.2)
    limited = account(2, revision=2, rate_limit_reset_at=T0 + timedelta(minutes=1))
    assert cache.set_account(limited)
    wait_until(lambda: [a.id for a in near.list_schedulable(BUCKET, T0) or []] == [1, 3], 1)
    cache.delete_account(3)
    wait_until(lambda: [a.id for a in near.get_snapshot(BUCKET) or []] == [1, 2], 1)


def test_own_touches_at_once_and_others_within_the_check(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    near = near_cache(check_seconds=0.1, trust_seconds=0.5)
    before = near.get_snapshot(BUCKET)
    assert before is not None
    near.note_last_used({1: T0})
    got = near.get_snapshot(BUCKET)
    assert got is not None and got[0].last_used_at == T0 and got[1] is before[1]
    cache.update_last_used({2: T0 + timedelta(seconds=1)})  # another process
    wait_until(
        lambda: (near.get_snapshot(BUCKET) or [])[1].last_used_at == T0 + timedelta(seconds=1),
        1.5,
    )
    near.note_last_used({1: T0 - timedelta(hours=1)})  # an older touch changes nothing
    got = near.get_snapshot(BUCKET)
    assert got is not None and got[0].last_used_at == T0


def test_a_last_use_read_with_one_bucket_is_served_by_every_bucket(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    other = SchedulerBucket.parse("13:anthropic:mixed")
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    cache.set_snapshot(other, accounts(2, start=2), cache.reserve_version(other))
    near = near_cache(check_seconds=5, trust_seconds=10)
    assert names(near) is not None  # holds account 2 without a last use
    cache.update_last_used({2: T0})  # another process; this one's check is seconds away
    got = near.get_snapshot(other)  # read now: account 2 used at T0
    assert got is not None and got[0].last_used_at == T0
    held = near.get_snapshot(BUCKET)
    assert held is not None and held[1].last_used_at == T0  # not the older time


def test_a_held_back_account_returns_when_its_window_ends(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    until = T0 + timedelta(seconds=30)
    written = [account(1), account(2, overload_until=until), account(3)]
    cache.set_snapshot(BUCKET, written, cache.reserve_version(BUCKET))
    near = near_cache(background=False)
    assert [a.id for a in near.list_schedulable(BUCKET, T0) or []] == [1, 3]
    assert [a.id for a in near.list_schedulable(BUCKET, until) or []] == [1, 2, 3]
    assert [a.id for a in near.list_schedulable(BUCKET, T0) or []] == [1, 3]


def test_misses_and_empty_snapshots(cache: RedisSchedulerCache, near_cache: NearFactory) -> None:
    near = near_cache(background=False)
    assert near.list_schedulable(BUCKET, T0) is None
    cache.set_snapshot(BUCKET, [], cache.reserve_version(BUCKET))
    assert near.list_schedulable(BUCKET, T0) == []
    assert near.get_snapshot(BUCKET) is None  # as RedisSchedulerCache.get_snapshot


def test_memory_is_bounded_by_bucket_count(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    buckets = [SchedulerBucket(g, "anthropic", "single") for g in (1, 2, 3)]
    for bucket in buckets:
        cache.set_snapshot(bucket, accounts(2), cache.reserve_version(bucket))
    near = near_cache(background=False, max_buckets=2)
    for bucket in buckets:
        assert near.get_snapshot(bucket) is not None
    assert near.state.names() == ["2:anthropic:single", "3:anthropic:single"]


def test_the_epoch_is_set_once_and_gone_when_state_is_lost(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    assert cache.epoch() is None
    assert cache.reestablish(None, 0)
    epoch = cache.epoch()
    assert epoch is not None and not cache.reestablish(None, 0)
    redis_client.flushdb()
    assert cache.epoch() is None


def test_a_near_cache_drops_what_it_holds_when_the_epoch_goes_and_comes(
    near_cache: NearFactory, cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    near = near_cache(background=False)
    cache.reestablish(None, 0)
    cache.set_snapshot(BUCKET, accounts(2), cache.reserve_version(BUCKET))
    assert names(near) is not None
    redis_client.delete(cache.keys.epoch)
    near.check()
    assert near.state.names() == []
    assert names(near) is not None  # still served while no epoch is set
    cache.reestablish(None, 0)
    near.check()
    assert near.state.names() == []


# -- races -----------------------------------------------------------------------------


def test_a_reader_never_serves_a_version_older_than_one_it_served(
    redis_client: redis.Redis, near_cache: NearFactory
) -> None:
    writer = RedisSchedulerCache(redis_client)
    writer.set_snapshot(BUCKET, accounts(5, revision=0), writer.reserve_version(BUCKET))
    near = near_cache(check_seconds=0.05, trust_seconds=0.1)
    deadline = time.monotonic() + 1.5
    errors: list[str] = []

    def write() -> None:
        while time.monotonic() < deadline:
            version = writer.reserve_version(BUCKET)
            time.sleep(0.001 * (version % 3))  # reads of varying speed finish out of order
            writer.set_snapshot(BUCKET, accounts(5, revision=version), version)

    def read() -> None:
        served = 0
        while time.monotonic() < deadline:
            got = near.get_snapshot(BUCKET)
            assert got is not None
            revision = got[0].revision or 0
            if revision < served:
                errors.append(f"served v{revision} after v{served}")
            served = max(served, revision)

    threads = [threading.Thread(target=write) for _ in range(3)]
    threads += [threading.Thread(target=read) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    final = writer.bucket_info(BUCKET).active_version
    wait_until(lambda: (near.get_snapshot(BUCKET) or [])[0].revision == final, 1)


def test_a_push_lost_during_a_reconnect_is_caught_by_the_check(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory
) -> None:
    cache.set_snapshot(BUCKET, accounts(2), cache.reserve_version(BUCKET))
    near = near_cache(check_seconds=0.3, trust_seconds=0.6)
    assert names(near) == ["acct-1", "acct-2"]
    time.sleep(0.2)
    near.state.pushed = lambda name, gen: None  # type: ignore[method-assign]  # every push lost
    redis_client.client_kill_filter(_type="pubsub")
    cache.set_snapshot(BUCKET, accounts(2, name="new"), cache.reserve_version(BUCKET))
    assert wait_until(lambda: names(near) == ["new", "new"], 2) <= 0.6 + 0.1


def test_a_stuck_checker_turns_reads_into_round_trips(
    cache: RedisSchedulerCache, near_cache: NearFactory
) -> None:
    cache.set_snapshot(BUCKET, accounts(2), cache.reserve_version(BUCKET))
    near = near_cache(background=False, check_seconds=0.05, trust_seconds=0.1)
    assert names(near) == ["acct-1", "acct-2"]
    cache.set_snapshot(BUCKET, accounts(2, name="new"), cache.reserve_version(BUCKET))
    time.sleep(0.15)  # no push (no thread), no check: trust runs out
    assert names(near) == ["new", "new"]


@pytest.mark.slow
def test_a_redis_restart_empties_the_near_caches_trust(
    private_redis: RedisServer, near_cache: NearFactory
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=2)
    cache = RedisSchedulerCache(client)
    cache.reestablish(None, 0)  # as the outbox poller does on a fresh Redis
    cache.set_snapshot(BUCKET, accounts(2), cache.reserve_version(BUCKET))
    near = near_cache(client, check_seconds=0.1, trust_seconds=0.3)
    assert names(near) == ["acct-1", "acct-2"]
    epoch = near.state.epoch
    private_redis.stop()
    private_redis.start()  # empty: no persistence
    cache.set_snapshot(BUCKET, [account(9, name="after")], cache.reserve_version(BUCKET))
    assert cache.bucket_info(BUCKET).active_version == 1  # versions started over
    wait_until(lambda: names(near) == ["after"], 3)
    assert near.state.epoch not in (None, epoch)
    client.close()


def test_one_log_entry_per_batch_names_every_account_that_moved(
    cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    before = redis_client.zcard(cache.keys.last_used_log)
    cache.update_last_used({1: T0, 2: T0, 3: T0 - timedelta(days=400), 99: T0})
    log: list[bytes] = redis_client.zrange(cache.keys.last_used_log, 0, -1)  # type: ignore[assignment]
    assert len(log) == before + 1  # one entry for the call, whatever its size
    assert log[-1].partition(b":")[2] == b"1,2,3"  # 99 is no account: not logged


def test_a_near_cache_behind_the_trimmed_touch_log_reads_again(
    cache: RedisSchedulerCache, redis_client: redis.Redis, near_cache: NearFactory
) -> None:
    cache.set_snapshot(BUCKET, accounts(3), cache.reserve_version(BUCKET))
    near = near_cache(background=False)
    assert names(near) is not None
    near.check()
    later = T0 + timedelta(hours=1)
    cache.update_last_used({1: later})
    redis_client.delete(cache.keys.last_used_log)  # trimmed before this process looked
    near.check()
    assert near.state.names() == []  # it cannot know what moved: it reads again
    got = near.get_snapshot(BUCKET)
    assert got is not None and got[0].last_used_at == later
