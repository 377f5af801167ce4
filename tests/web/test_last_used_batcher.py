"""record_last_used and its batcher, against a real Redis: speed to the cache, round
trips per flush, monotonic times under threads and processes, and Redis outages."""

from __future__ import annotations

import logging
import multiprocessing
import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from cache import Account, RedisSchedulerCache
from tasks.settings import Settings
from tasks.web.last_used import LastUsedBatcher, record_last_used
from tests.processes import wait_for
from tests.support import RedisServer

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class CountingRedis(redis.Redis):
    """A client that counts the commands it sends (each one a round trip here)."""

    calls = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).calls += 1
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def known(cache: RedisSchedulerCache, *ids: int) -> None:
    """Put accounts into the cache: last use is kept for known accounts only."""
    for account_id in ids:
        cache.set_account(
            Account(id=account_id, name=f"a{account_id}", platform="openai", type="apikey")
        )


def last_used(cache: RedisSchedulerCache, account_id: int) -> datetime | None:
    account = cache.get_account(account_id)
    return account.last_used_at if account is not None else None


@pytest.fixture
def batchers() -> Iterator[Callable[..., LastUsedBatcher]]:
    made: list[LastUsedBatcher] = []

    def make(*args: Any, **kwargs: Any) -> LastUsedBatcher:
        batcher = LastUsedBatcher(*args, **kwargs)
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def test_record_last_used_reaches_the_cache_within_a_second(
    configured: Settings, task_cache: RedisSchedulerCache
) -> None:
    known(task_cache, 7)
    at = datetime.now(UTC).replace(microsecond=0)
    record_last_used(7, at)
    # The default flush interval is 0.5 s; a second is the promise, the rest is slack.
    wait_for(
        lambda: last_used(task_cache, 7) == at,
        timeout=5,
        interval=0.02,
        what="the touch in the cache",
    )
    assert task_cache.pending_last_used() == {7: at}


def test_one_flush_is_one_round_trip_whatever_the_batch_size(
    redis_url: str, redis_client: redis.Redis, batchers: Callable[..., LastUsedBatcher]
) -> None:
    cache = RedisSchedulerCache(CountingRedis.from_url(redis_url))
    known(cache, *range(1, 1001))
    batcher = batchers(cache, interval_seconds=3600)
    batcher.touch(1, T0)
    batcher.flush()  # loads the script once; every later flush is a single EVALSHA

    for account_id in range(1, 1001):
        batcher.touch(account_id, T0 + timedelta(seconds=account_id))
    CountingRedis.calls = 0
    assert batcher.flush() == 1000
    assert CountingRedis.calls == 1
    assert batcher.flush() == 0  # nothing new: no round trip at all
    assert CountingRedis.calls == 1
    assert last_used(cache, 1000) == T0 + timedelta(seconds=1000)


def test_touch_keeps_the_latest_time_and_validates_its_input(
    cache: RedisSchedulerCache, batchers: Callable[..., LastUsedBatcher]
) -> None:
    known(cache, 1)
    batcher = batchers(cache, interval_seconds=3600)
    batcher.touch(1, T0 + timedelta(seconds=5))
    batcher.touch(1, T0)  # older: ignored
    batcher.touch(1, (T0 + timedelta(seconds=3)).replace(tzinfo=None))  # naive is UTC
    assert batcher.pending == 1
    batcher.flush()
    assert last_used(cache, 1) == T0 + timedelta(seconds=5)
    for bad in (0, -3, "7", 2.5, True, None):
        with pytest.raises(ValueError, match="account id"):
            batcher.touch(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="datetime"):
        batcher.touch(1, "2026-01-01")  # type: ignore[arg-type]


def test_concurrent_threads_never_move_a_time_back(
    cache: RedisSchedulerCache, batchers: Callable[..., LastUsedBatcher]
) -> None:
    ids = range(1, 21)
    known(cache, *ids)
    # A short interval so flushes interleave with the touches.
    batcher = batchers(cache, interval_seconds=0.005)
    expected: dict[int, datetime] = {}
    lock = threading.Lock()

    def touch_randomly(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(3000):
            account_id = rng.choice(ids)
            at = T0 + timedelta(milliseconds=rng.randrange(10_000_000))
            batcher.touch(account_id, at)
            with lock:
                if at > expected.get(account_id, T0 - timedelta(days=1)):
                    expected[account_id] = at

    threads = [threading.Thread(target=touch_randomly, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    batcher.flush()

    assert {i: last_used(cache, i) for i in ids} == expected
    assert cache.pending_last_used() == expected


def _touch_in_child(url: str, seed: int, parent: LastUsedBatcher | None) -> None:
    rng = random.Random(seed)
    if parent is None:
        batcher = LastUsedBatcher(RedisSchedulerCache.from_url(url), interval_seconds=0.005)
    else:
        batcher = parent  # inherited through fork, thread and all: it must start afresh
    for _ in range(2000):
        batcher.touch(rng.randrange(1, 21), T0 + timedelta(milliseconds=rng.randrange(10**7)))
    batcher.close()


def _expected_from_seeds(seeds: range) -> dict[int, datetime]:
    expected: dict[int, datetime] = {}
    for seed in seeds:
        rng = random.Random(seed)
        for _ in range(2000):
            account_id = rng.randrange(1, 21)
            at = T0 + timedelta(milliseconds=rng.randrange(10**7))
            if account_id not in expected or at > expected[account_id]:
                expected[account_id] = at
    return expected


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_concurrent_processes_never_move_a_time_back(
    redis_url: str,
    cache: RedisSchedulerCache,
    batchers: Callable[..., LastUsedBatcher],
    start_method: str,
) -> None:
    known(cache, *range(1, 21))
    parent: LastUsedBatcher | None = None
    if start_method == "fork":
        # A web server that forks its workers after the batcher's thread started.
        parent = batchers(RedisSchedulerCache.from_url(redis_url), interval_seconds=0.005)
        parent.touch(1, T0)
    context: Any = multiprocessing.get_context(start_method)
    seeds = range(4)
    children = [
        context.Process(target=_touch_in_child, args=(redis_url, seed, parent)) for seed in seeds
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    expected = _expected_from_seeds(seeds)
    assert {i: last_used(cache, i) for i in range(1, 21)} == expected


def test_while_redis_is_down_touches_are_kept_merged_and_sent_after(
    private_redis: RedisServer,
    batchers: Callable[..., LastUsedBatcher],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=0.5)
    cache = RedisSchedulerCache(client)
    known(cache, 1, 2)
    client.save()  # the accounts survive the restart (loaded from the RDB file)
    batcher = batchers(cache, interval_seconds=3600)

    private_redis.stop()
    caplog.set_level(logging.WARNING, logger="tasks.web.last_used")
    batcher.touch(1, T0)
    assert batcher.flush() == 0
    batcher.touch(1, T0 + timedelta(seconds=1))
    batcher.touch(2, T0)
    assert batcher.flush() == 0
    assert batcher.flush() == 0
    assert batcher.pending == 2  # one entry per account, however long the outage
    outage_lines = [r for r in caplog.records if "kept in memory" in r.getMessage()]
    assert len(outage_lines) == 1

    private_redis.start()
    assert batcher.flush() == 2
    assert last_used(cache, 1) == T0 + timedelta(seconds=1)
    assert last_used(cache, 2) == T0
    assert any("reach the cache again" in r.getMessage() for r in caplog.records)
    client.close()


def test_the_flusher_thread_sends_without_being_asked_and_close_sends_the_rest(
    cache: RedisSchedulerCache, batchers: Callable[..., LastUsedBatcher]
) -> None:
    known(cache, 1, 2)
    batcher = batchers(cache, interval_seconds=0.05)
    batcher.touch(1, T0)
    wait_for(lambda: last_used(cache, 1) == T0, timeout=10, what="the flusher thread")
    slow = batchers(cache, interval_seconds=3600)
    slow.touch(2, T0)
    slow.close()  # as at interpreter exit
    assert last_used(cache, 2) == T0


def test_touches_owed_to_the_database_are_sent_again_when_redis_loses_its_state(
    redis_url: str,
    redis_client: redis.Redis,
    batchers: Callable[..., LastUsedBatcher],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A touch reached Redis's pending hash; before a worker moved it into the database,
    # Redis lost everything (FLUSHALL here; a restart empty is the same to the batcher).
    from tasks.web import last_used as module

    monkeypatch.setattr(module, "EPOCH_LOOK_SECONDS", 0.0)
    cache = RedisSchedulerCache.from_url(redis_url)
    known(cache, 7, 8)
    assert cache.reestablish(None, 0)  # the outbox poller's epoch: state established
    batcher = batchers(cache, interval_seconds=3600)
    batcher.touch(7, T0)
    batcher.touch(8, T0 + timedelta(seconds=1))
    assert batcher.flush() == 2
    assert set(cache.pending_last_used()) == {7, 8}

    redis_client.flushall()
    assert cache.pending_last_used() == {}
    batcher.touch(8, T0 + timedelta(seconds=2))  # a newer touch meanwhile: it wins
    batcher.flush()

    assert cache.pending_last_used() == {7: T0, 8: T0 + timedelta(seconds=2)}
    # Seen once: the same epoch again sends nothing more.
    cache.ack_pending_last_used(cache.pending_last_used())
    batcher.flush()
    assert cache.pending_last_used() == {}


def test_a_batcher_that_never_saw_a_loss_sends_nothing_twice(
    redis_url: str, batchers: Callable[..., LastUsedBatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tasks.web import last_used as module

    monkeypatch.setattr(module, "EPOCH_LOOK_SECONDS", 0.0)
    cache = RedisSchedulerCache.from_url(redis_url)
    known(cache, 7)
    cache.reestablish(None, 0)
    batcher = batchers(cache, interval_seconds=3600)
    batcher.touch(7, T0)
    batcher.flush()
    cache.ack_pending_last_used(cache.pending_last_used())
    batcher.flush()
    assert cache.pending_last_used() == {}
