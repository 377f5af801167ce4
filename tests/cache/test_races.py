"""The races of the original design, run against it and against the cache.

Each race is shown twice: once with the interleaving forced, where the reference design
(benchmarks/reference.py) demonstrably loses and ours does not, and once as a free-running
load of many threads or processes checking the invariants.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis

from benchmarks.reference import ReferenceCache
from cache import RedisSchedulerCache, SchedulerBucket
from tests.cache.factories import T0, account

BUCKET = SchedulerBucket.parse("7:openai:single")
LOAD_SECONDS = 1.5


def read_stamp(version: int, count: int = 5) -> list[Any]:
    """Accounts as a rebuild that read the source at ``version`` would have them."""
    return [
        account(i, platform="openai", name=f"read-{version}", revision=version)
        for i in range(1, count + 1)
    ]


def run_threads(targets: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []

    def guard(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guard, args=(t,), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
        assert not thread.is_alive(), "a racing thread did not finish"
    if errors:
        raise errors[0]


# -- stale read activating over a newer one --------------------------------------------


def test_reference_lets_a_slow_stale_rebuild_win(redis_client: redis.Redis) -> None:
    ref = ReferenceCache(redis_client)
    slow_read = read_stamp(1)  # A reads the source (old data) ...
    fast_read = read_stamp(2)  # ... B reads after a change
    ref.set_snapshot(BUCKET, fast_read)
    ref.set_snapshot(BUCKET, slow_read)  # A finishes last
    got = ref.get_snapshot(BUCKET)
    assert got is not None and got[0].name == "read-1"  # the stale read is active


def test_cache_keeps_the_newest_read_whatever_finishes_last(cache: RedisSchedulerCache) -> None:
    slow_version = cache.reserve_version(BUCKET)
    slow_read = read_stamp(slow_version)
    fast_version = cache.reserve_version(BUCKET)
    fast_read = read_stamp(fast_version)
    assert cache.set_snapshot(BUCKET, fast_read, fast_version)
    assert not cache.set_snapshot(BUCKET, slow_read, slow_version)
    got = cache.get_snapshot(BUCKET)
    assert got is not None and got[0].name == f"read-{fast_version}"


def _writer_loop(cache: RedisSchedulerCache, deadline: float, written: list[int]) -> None:
    while time.monotonic() < deadline:
        version = cache.reserve_version(BUCKET)
        data = read_stamp(version)
        time.sleep(0.001 * (version % 3))  # reads of varying speed
        cache.set_snapshot(BUCKET, data, version)
        written.append(version)


def _reader_loop(cache: RedisSchedulerCache, deadline: float, seen: list[int]) -> None:
    versions: list[int] = []
    revisions: dict[int, int] = {}
    while time.monotonic() < deadline:
        got = cache.get_snapshot(BUCKET)
        if got is None:
            assert not versions, "a miss after the bucket was ready"
            continue
        for acc in got:
            assert acc.revision is not None
            assert acc.revision >= revisions.get(acc.id, 0), "a payload went back in time"
            revisions[acc.id] = acc.revision
        versions.append(cache.bucket_info(BUCKET).active_version or 0)
    assert versions == sorted(versions), "the active version went down"
    seen.extend(versions)


def test_many_threads_write_and_read_one_bucket(redis_client: redis.Redis) -> None:
    cache = RedisSchedulerCache(redis_client)
    cache.set_snapshot(BUCKET, read_stamp(0), cache.reserve_version(BUCKET))
    deadline = time.monotonic() + LOAD_SECONDS
    written: list[int] = []
    seen: list[int] = []
    run_threads(
        [lambda: _writer_loop(cache, deadline, written) for _ in range(6)]
        + [lambda: _reader_loop(cache, deadline, seen) for _ in range(3)]
    )
    assert len(written) > 20 and len(seen) > 20
    final = cache.get_snapshot(BUCKET)
    assert final is not None
    assert final[0].name == f"read-{max(written)}"  # the newest reserved version won
    assert cache.bucket_info(BUCKET).active_version == max(written)
    _assert_only_live_keys_lack_a_ttl(redis_client, cache)


def _assert_only_live_keys_lack_a_ttl(client: redis.Redis, cache: RedisSchedulerCache) -> None:
    active = cache.bucket_info(BUCKET).active_version
    for key in client.scan_iter(match=f"{cache.keys.snapshot_stem(BUCKET)}*"):
        if key.decode() != cache.keys.snapshot(BUCKET, active or 0):
            assert client.ttl(key) > 0, f"{key!r} would never expire"


def _process_writer(url: str, seconds: float, queue: Any) -> None:
    cache = RedisSchedulerCache.from_url(url)
    written: list[int] = []
    _writer_loop(cache, time.monotonic() + seconds, written)
    queue.put(written)


def _process_reader(url: str, seconds: float, queue: Any) -> None:
    cache = RedisSchedulerCache.from_url(url)
    seen: list[int] = []
    _reader_loop(cache, time.monotonic() + seconds, seen)
    queue.put(seen)


def test_many_processes_write_and_read_one_bucket(
    redis_url: str, redis_client: redis.Redis
) -> None:
    cache = RedisSchedulerCache(redis_client)
    cache.set_snapshot(BUCKET, read_stamp(0), cache.reserve_version(BUCKET))
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [
        context.Process(target=_process_writer, args=(redis_url, LOAD_SECONDS, queue))
        for _ in range(3)
    ]
    procs += [
        context.Process(target=_process_reader, args=(redis_url, LOAD_SECONDS, queue))
        for _ in range(2)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0, "a racing process failed its invariants"
    written = [v for r in results[:3] for v in r]
    assert written
    final = cache.get_snapshot(BUCKET)
    assert final is not None and final[0].name == f"read-{cache.bucket_info(BUCKET).active_version}"
    assert cache.bucket_info(BUCKET).active_version == cache.bucket_info(BUCKET).reserved_version
    _assert_only_live_keys_lack_a_ttl(redis_client, cache)


# -- last use racing an account change -------------------------------------------------


class _ChangeDuringRead:
    """Runs ``change`` once, right after the wrapped client's next MGET returns."""

    def __init__(self, client: redis.Redis, change: Callable[[], None]) -> None:
        self._client = client
        self._change: Callable[[], None] | None = change

    def mget(self, *args: Any, **kwargs: Any) -> Any:
        result = self._client.mget(*args, **kwargs)
        if self._change is not None:
            change, self._change = self._change, None
            change()
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def test_reference_last_used_undoes_a_concurrent_rate_limit(redis_client: redis.Redis) -> None:
    ref = ReferenceCache(redis_client)
    ref.set_account(account(1))
    limited = account(1, revision=2, rate_limit_reset_at=T0 + timedelta(minutes=5))
    ref.client = _ChangeDuringRead(
        redis_client, lambda: ReferenceCache(redis_client).set_account(limited)
    )  # type: ignore[assignment]
    ref.update_last_used({1: T0})
    got = ReferenceCache(redis_client).get_account(1)
    assert got is not None and got.rate_limit_reset_at is None  # the rate limit is lost


def test_cache_last_used_keeps_concurrent_changes(redis_client: redis.Redis) -> None:
    cache = RedisSchedulerCache(redis_client)
    cache.set_account(account(1, revision=0))
    cache.update_last_used({1: T0})
    deadline = time.monotonic() + LOAD_SECONDS
    final_revision = [0]
    latest_touch = [T0]

    def change() -> None:
        revision = 0
        while time.monotonic() < deadline:
            revision += 1
            status = "disabled" if revision % 2 else "active"
            assert cache.set_account(account(1, revision=revision, status=status))
        final_revision[0] = revision

    def touch(offset: int) -> None:
        step = 0
        while time.monotonic() < deadline:
            step += 1
            moment = T0 + timedelta(milliseconds=step * 10 + offset)
            cache.update_last_used({1: moment})
            latest_touch[0] = max(latest_touch[0], moment)

    def observe() -> None:
        last = T0 - timedelta(days=1)
        while time.monotonic() < deadline:
            got = cache.get_account(1)
            assert got is not None and got.last_used_at is not None and got.last_used_at >= last
            last = got.last_used_at

    run_threads([change, lambda: touch(0), lambda: touch(5), observe])
    got = cache.get_account(1)
    assert got is not None
    assert got.revision == final_revision[0]
    assert got.status == ("disabled" if final_revision[0] % 2 else "active")
    assert got.last_used_at == latest_touch[0]


# -- a lock holder that outlived its TTL ------------------------------------------------


def test_reference_unlock_frees_the_next_holders_lock(redis_client: redis.Redis) -> None:
    ref = ReferenceCache(redis_client)
    assert ref.try_lock_bucket(BUCKET, 0.05)
    time.sleep(0.1)
    assert ref.try_lock_bucket(BUCKET, 10)  # the next holder
    ref.unlock_bucket(BUCKET)  # the first, finally done
    assert ref.try_lock_bucket(BUCKET, 10)  # a third runs beside the second


def test_cache_lock_under_contention_has_one_holder(cache: RedisSchedulerCache) -> None:
    deadline = time.monotonic() + LOAD_SECONDS
    holders: list[int] = []
    guard = threading.Lock()
    inside = [0]

    def contend(worker: int) -> None:
        while time.monotonic() < deadline:
            token = cache.try_lock_bucket(BUCKET, 0.02 if worker == 0 else 5)
            if token is None:
                continue
            with guard:
                inside[0] += 1
                holders.append(inside[0])
            # Worker 0 outlives its 20 ms TTL; its late unlock must not free another's lock.
            time.sleep(0.04 if worker == 0 else 0.001)
            with guard:
                inside[0] -= 1
            released = cache.unlock_bucket(BUCKET, token)
            assert released or worker == 0

    run_threads([lambda w=w: contend(w) for w in range(4)])  # type: ignore[misc]
    assert holders and max(holders) <= 2  # only the expired worker 0 overlaps one other


# -- watermark writers ------------------------------------------------------------------


def test_reference_watermark_goes_back(redis_client: redis.Redis) -> None:
    ref = ReferenceCache(redis_client)
    ref.set_outbox_watermark(10)  # a fast poller
    ref.set_outbox_watermark(7)  # a slower one, finishing later
    assert ref.get_outbox_watermark() == 7


def test_cache_watermark_writers_racing(cache: RedisSchedulerCache) -> None:
    deadline = time.monotonic() + LOAD_SECONDS
    highest = [0]
    guard = threading.Lock()

    def write(start: int) -> None:
        value = start
        while time.monotonic() < deadline:
            value += 3
            cache.set_outbox_watermark(value)
            with guard:
                highest[0] = max(highest[0], value)

    def observe() -> None:
        last = 0
        while time.monotonic() < deadline:
            now = cache.get_outbox_watermark()
            assert now >= last, "the watermark went backwards"
            last = now

    run_threads([lambda s=s: write(s) for s in range(3)] + [observe])
    assert cache.get_outbox_watermark() == highest[0]
