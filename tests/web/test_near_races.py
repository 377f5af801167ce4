"""The near cache behind list_schedulable under races, against real Redis servers, real
threads and real processes: versions never go back, lost pushes are caught, a Redis
that lost its state is not trusted, and other processes' changes arrive in time."""

from __future__ import annotations

import itertools
import multiprocessing
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from cache import Account, RedisSchedulerCache, SchedulerBucket
from cache.keys import NEAR_CHECK_SECONDS
from tasks import list_schedulable, runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.web import reader
from tests.processes import wait_for
from tests.support import RedisServer, seed_group

pytestmark = pytest.mark.timeout(120)

BUCKET = SchedulerBucket.parse("0:openai:single")
SIZE = 50


@pytest.fixture(autouse=True)
def fresh_limiter() -> Iterator[None]:
    reader._limiter = None
    yield
    reader._limiter = None


def version_of(n: int) -> list[Account]:
    """The bucket's accounts at version ``n``: account 1 names it (a newer revision)."""
    return [
        Account(
            id=i,
            name=f"v{n}" if i == 1 else f"a{i}",
            platform="openai",
            type="apikey",
            revision=n if i == 1 else 1,
        )
        for i in range(1, SIZE + 1)
    ]


def served(accounts: Sequence[Account]) -> int:
    return int(next(a.name for a in accounts if a.id == 1)[1:])


def write_version(cache: RedisSchedulerCache, n: int) -> None:
    cache.set_snapshot(BUCKET, version_of(n), cache.reserve_version(BUCKET))


def write_versions(url: str, rounds: int) -> None:
    """Another process: ``rounds`` rebuilds, each naming the version it reserved."""
    cache = RedisSchedulerCache.from_url(url)
    for _ in range(rounds):
        version = cache.reserve_version(BUCKET)
        cache.set_snapshot(BUCKET, version_of(version), version)


def held_by_the_near_cache() -> bool:
    near = runtime.get_near_cache()
    return near is not None and str(BUCKET) in near.state.names()


def test_a_reader_never_serves_a_version_older_than_one_it_served(
    configured: Settings, task_cache: RedisSchedulerCache
) -> None:
    write_version(task_cache, 0)
    list_schedulable(0, "openai")
    stop = threading.Event()
    seen: dict[int, list[int]] = {}
    failures: list[BaseException] = []

    def read(who: int) -> None:
        mine = seen.setdefault(who, [])
        try:
            while not stop.is_set():
                mine.append(served(list_schedulable(0, "openai")))
        except BaseException as exc:
            failures.append(exc)

    readers = [threading.Thread(target=read, args=(who,)) for who in range(4)]
    for thread in readers:
        thread.start()
    # Two writers in other processes race each other: versions activate out of the
    # order their data was read in, and readers see pushes and checks interleave.
    context = multiprocessing.get_context("spawn")
    writers = [
        context.Process(target=write_versions, args=(configured.redis_url, 300)) for _ in range(2)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=60)
        assert process.exitcode == 0
    final = served(task_cache.get_snapshot(BUCKET) or [])
    wait_for(lambda: all(v and v[-1] == final for v in seen.values()), timeout=3, interval=0.01)
    stop.set()
    for thread in readers:
        thread.join(timeout=10)
    assert not failures, failures
    for who, versions in seen.items():
        back = [(a, b) for a, b in itertools.pairwise(versions) if b < a]
        assert not back, f"reader {who} went back: {back[:5]}"
        assert len(set(versions)) > 10, f"reader {who} saw too few versions: {set(versions)}"


def test_a_push_lost_during_a_reconnect_is_caught_by_the_backstop(
    configured: Settings, task_cache: RedisSchedulerCache, redis_client: redis.Redis
) -> None:
    write_version(task_cache, 0)
    list_schedulable(0, "openai")
    wait_for(held_by_the_near_cache, timeout=2, interval=0.01, what="the bucket held")
    took = []
    for n in range(1, 6):
        time.sleep(0.3)  # subscribed again, and trusted
        # Its subscription dropped and this version activated while it reconnects: the
        # push is published to no one.
        redis_client.client_kill_filter(_type="pubsub")
        write_version(task_cache, n)
        started = time.monotonic()
        while served(list_schedulable(0, "openai")) != n:
            assert time.monotonic() - started < 1.5, f"version {n} not seen after 1.5 s"
            time.sleep(0.002)
        took.append(time.monotonic() - started)
    print(f"lost push caught after: max {max(took) * 1000:.0f} ms")
    # Within one check interval (plus a busy machine's scheduling), not only the trust.
    assert max(took) < NEAR_CHECK_SECONDS + 0.25


def test_a_redis_restart_empties_the_near_caches_trust(
    configured: Settings, private_redis: RedisServer, db: SqlWriter, source: SqlSource
) -> None:
    runtime.reset(configured.model_copy(update={"redis_url": private_redis.url}))
    group = seed_group(source, accounts=3)
    bucket = SchedulerBucket(group.id, "openai", "single")
    cache = runtime.get_cache()
    cache.reestablish(None, 0)
    first = list_schedulable(group.id, "openai")  # the miss: written through
    assert [a.id for a in list_schedulable(group.id, "openai")] == [a.id for a in first]
    near = runtime.get_near_cache()
    assert near is not None and str(bucket) in near.state.names()
    gone = first[0].id
    # Changed in the database while the cache is not rebuilt: the cache still has it...
    db.update_account(gone, status="disabled")
    assert gone in [a.id for a in list_schedulable(group.id, "openai")]

    private_redis.restart()  # every snapshot and the epoch are lost

    # ... and the near cache must not go on serving its copy of a state Redis lost: the
    # next answers come from the source (the fallback), without the disabled account.
    wait_for(
        lambda: gone not in [a.id for a in list_schedulable(group.id, "openai")],
        timeout=2,
        interval=0.01,
        what="the held snapshot dropped",
    )
    assert near.state.epoch == ""  # no epoch: a state of its own
    # The outbox poller starts a new epoch and owes every bucket a rebuild; the near
    # cache drops what it read under no epoch.
    assert cache.reestablish(None, 0)
    version = cache.reserve_version(bucket)
    cache.set_snapshot(bucket, source.accounts_for_bucket(bucket, datetime.now(UTC)), version)
    wait_for(lambda: near.state.epoch not in (None, ""), timeout=2, interval=0.01)
    for _ in range(50):
        assert gone not in [a.id for a in list_schedulable(group.id, "openai")]
        time.sleep(0.01)
    assert held_or_none(near, bucket) in (None, version)


def held_or_none(near: Any, bucket: SchedulerBucket) -> int | None:
    held: int | None = near.state.version(str(bucket))
    return held


def activate_in_turn(url: str, rounds: int, go: Any, out: Any) -> None:
    """Another process: at each word, activate the next version and say when it began."""
    cache = RedisSchedulerCache.from_url(url)
    for n in range(1, rounds + 1):
        go.get(timeout=30)
        began = time.time()
        write_version(cache, n)
        out.put(began)


def touch_in_turn(settings: Settings, rounds: int, go: Any, out: Any) -> None:
    """Another web process: at each word, record a use of account 2 and say when."""
    from tasks.web.last_used import default_batcher, record_last_used

    runtime.reset(settings)
    for n in range(1, rounds + 1):
        go.get(timeout=30)
        at = datetime.fromtimestamp(1_700_000_000 + n, UTC)
        out.put((time.time(), at))
        record_last_used(2, at)
    default_batcher().close()


def test_another_processs_activation_and_touch_reach_list_schedulable_in_time(
    configured: Settings, task_cache: RedisSchedulerCache
) -> None:
    write_version(task_cache, 0)
    list_schedulable(0, "openai")
    wait_for(held_by_the_near_cache, timeout=2, interval=0.01, what="the bucket held")
    time.sleep(0.3)  # subscribed
    context = multiprocessing.get_context("spawn")
    go, out = context.Queue(), context.Queue()
    rounds = 40
    writer = context.Process(target=activate_in_turn, args=(configured.redis_url, rounds, go, out))
    writer.start()
    delays = []
    for n in range(1, rounds + 1):
        go.put(n)
        began = out.get(timeout=30)
        while served(list_schedulable(0, "openai")) != n:
            time.sleep(0.0005)
        delays.append((time.time() - began) * 1000)
    writer.join(timeout=30)
    delays.sort()
    p99 = delays[int(len(delays) * 0.99)]
    print(f"activation seen after: median {statistics.median(delays):.1f} ms, p99 {p99:.1f} ms")
    # 50 ms p99 is the benchmark's figure; a shared test machine gets slack.
    assert statistics.median(delays) < 50
    assert p99 < 250

    toucher = context.Process(target=touch_in_turn, args=(configured, 3, go, out))
    toucher.start()
    for n in range(1, 4):
        go.put(n)
        touched, at = out.get(timeout=30)
        while next(a for a in list_schedulable(0, "openai") if a.id == 2).last_used_at != at:
            assert time.time() - touched < 3, "another process's touch not seen after 3 s"
            time.sleep(0.005)
        print(f"touch seen after {time.time() - touched:.2f} s")
        assert time.time() - touched < 1.5 + 0.5  # 1.5 s promised, slack for the machine
    toucher.join(timeout=30)
