"""Last use into the database through a real worker: the flush, its singleton lock, a
worker killed mid-flush, and the update_last_used task."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from cache import RedisSchedulerCache
from tasks.celery import app
from tasks.source import SqlSource, SqlWriter
from tasks.web.last_used import LastUsedBatcher
from tasks.worker.last_used import (
    FLUSH_LOCK,
    flush_last_used,
    flush_pending,
    parse_updates,
    update_last_used,
)
from tests.processes import WorkerProcess, wait_for
from tests.worker.conftest import EventLog
from tests.worker.helpers import SLOW_SOURCE, WRITING

pytestmark = pytest.mark.slow

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def db_last_used(source: SqlSource, account_id: int) -> datetime | None:
    return source.get_accounts([account_id])[account_id].last_used_at


def cached_last_used(cache: RedisSchedulerCache, account_id: int) -> datetime | None:
    account = cache.get_account(account_id)
    return account.last_used_at if account is not None else None


def make_accounts(source: SqlSource, cache: RedisSchedulerCache, count: int) -> list[int]:
    ids = []
    for n in range(count):
        account = SqlWriter(source).create_account(name=f"a{n}", platform="openai", type="apikey")
        cache.set_account(account)
        ids.append(account.id)
    return ids


def touch(cache: RedisSchedulerCache, times: dict[int, datetime]) -> None:
    """Touches as a web process sends them: one batch into the cache's pending hash."""
    batcher = LastUsedBatcher(cache, interval_seconds=3600)
    for account_id, at in times.items():
        batcher.touch(account_id, at)
    assert batcher.flush() == len(times)


def test_the_flush_writes_pending_times_and_the_database_never_goes_back(
    worker: WorkerProcess, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    fresh, stale = make_accounts(source, task_cache, 2)
    source.update_last_used({stale: T0 + timedelta(hours=1)})  # the database is ahead
    touch(task_cache, {fresh: T0, stale: T0})

    flush_last_used.delay()
    wait_for(lambda: not task_cache.pending_last_used(), what="pending acknowledged")
    assert db_last_used(source, fresh) == T0
    assert db_last_used(source, stale) == T0 + timedelta(hours=1)
    assert task_cache.stats()["last_used_db_flushes"] == "1"


def test_a_touch_during_a_flush_stays_pending_for_the_next(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    source: SqlSource,
    task_cache: RedisSchedulerCache,
) -> None:
    start_worker({**worker_env, "SCHED_SOURCE_FACTORY": SLOW_SOURCE})
    (account,) = make_accounts(source, task_cache, 1)
    touch(task_cache, {account: T0})
    flush_last_used.delay()
    lock = task_cache.keys.named_lock(FLUSH_LOCK)
    wait_for(lambda: task_cache.client.exists(WRITING), what="a flush in its write")
    touch(task_cache, {account: T0 + timedelta(seconds=5)})  # while the slow write runs

    wait_for(lambda: db_last_used(source, account) == T0, what="the first time written")
    wait_for(lambda: not task_cache.client.exists(lock), what="the flush finished")
    assert task_cache.pending_last_used() == {account: T0 + timedelta(seconds=5)}
    flush_last_used.delay()
    wait_for(
        lambda: db_last_used(source, account) == T0 + timedelta(seconds=5),
        what="the newer time written by the next flush",
    )
    assert task_cache.pending_last_used() == {}


def test_a_worker_killed_mid_flush_loses_nothing(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    source: SqlSource,
    task_cache: RedisSchedulerCache,
) -> None:
    # A short lock TTL: the killed flush's lock must not hold up the next one for long.
    short = {**worker_env, "SCHED_LOCK_TTL_SECONDS": "3", "SCHED_REBUILD_TIME_LIMIT_SECONDS": "2"}
    doomed = start_worker({**short, "SCHED_SOURCE_FACTORY": SLOW_SOURCE})
    ids = make_accounts(source, task_cache, 3)
    times = {account_id: T0 + timedelta(seconds=account_id) for account_id in ids}
    touch(task_cache, times)

    flush_last_used.delay()
    wait_for(lambda: task_cache.client.exists(WRITING), what="a flush in its write")
    doomed.kill()  # SIGKILL, worker and pool, in the middle of the database write
    assert task_cache.pending_last_used() == times

    start_worker(short)

    def flushed() -> bool:
        flush_last_used.delay()  # as beat would, every interval
        return all(db_last_used(source, i) == at for i, at in times.items())

    wait_for(flushed, interval=0.5, what="the times in the database after the restart")
    wait_for(lambda: not task_cache.pending_last_used(), what="pending acknowledged")


def test_a_killed_flush_holds_the_next_one_back_one_interval_not_the_lock_ttl(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    source: SqlSource,
    task_cache: RedisSchedulerCache,
) -> None:
    env = {**worker_env, "SCHED_LAST_USED_DB_FLUSH_SECONDS": "1"}  # lock TTL: 30 s
    doomed = start_worker({**env, "SCHED_SOURCE_FACTORY": SLOW_SOURCE})
    other = start_worker(env, queues="rebuild")
    ids = make_accounts(source, task_cache, 2)
    times = {account_id: T0 + timedelta(seconds=account_id) for account_id in ids}
    touch(task_cache, times)

    flush_last_used.delay()
    wait_for(lambda: task_cache.client.exists(WRITING), what="a flush in its write")
    doomed.kill()
    killed_at = time.monotonic()
    app.control.add_consumer("last_used", destination=[other.name], reply=True, timeout=5)

    def flushed() -> bool:
        flush_last_used.delay()  # as beat would, every interval
        return all(db_last_used(source, i) == at for i, at in times.items())

    wait_for(flushed, timeout=15, interval=0.5, what="the next flush")
    assert time.monotonic() - killed_at < 8


def test_an_id_out_of_range_is_refused_everywhere_and_never_blocks_a_flush(
    source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    good = make_accounts(source, task_cache, 1)[0]
    huge = 2**70
    with pytest.raises(ValueError, match="1180591620717411303424"):
        LastUsedBatcher(task_cache, interval_seconds=3600).touch(huge, T0)
    with pytest.raises(ValueError, match="1180591620717411303424"):
        task_cache.update_last_used({huge: T0}, record_pending=True)
    with pytest.raises(ValueError, match="1180591620717411303424"):
        parse_updates({str(huge): T0.timestamp()})
    with pytest.raises(ValueError, match="1180591620717411303424"):
        source.update_last_used({huge: T0})

    # Entries an older version let in: dropped as they are read, the rest flushed.
    ms = str(int(T0.timestamp() * 1000))
    task_cache.client.hset(
        task_cache.keys.last_used_pending,
        mapping={str(huge): ms, "abc": ms, "-3": ms, str(good + 1000): "soon"},
    )
    touch(task_cache, {good: T0})
    assert flush_pending(task_cache, source)["pending"] == 1
    assert db_last_used(source, good) == T0
    assert task_cache.client.hlen(task_cache.keys.last_used_pending) == 0


def test_a_last_use_the_database_refuses_is_dropped_and_the_rest_written(
    source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    refused, fine = make_accounts(source, task_cache, 2)
    with source.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"CREATE TRIGGER refuse BEFORE UPDATE OF last_used_at ON accounts "
                f"WHEN NEW.id = {refused} BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
        )
    touch(task_cache, {refused: T0, fine: T0})
    flush_pending(task_cache, source)
    assert db_last_used(source, fine) == T0
    assert task_cache.pending_last_used() == {}
    assert task_cache.stats()["last_used_dropped"] == "1"


def test_update_last_used_applies_to_cache_and_database_monotonic_on_both(
    worker: WorkerProcess, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    first, second = make_accounts(source, task_cache, 2)
    later = T0 + timedelta(minutes=5)
    update_last_used.delay({str(first): later.isoformat(), str(second): T0.timestamp()})
    wait_for(
        lambda: db_last_used(source, first) == later and db_last_used(source, second) == T0,
        what="the database",
    )
    assert cached_last_used(task_cache, first) == later
    assert cached_last_used(task_cache, second) == T0

    update_last_used.delay({str(first): T0.isoformat()})  # older: changes nothing
    update_last_used.delay({str(second): (T0 + timedelta(seconds=1)).timestamp()})
    wait_for(lambda: db_last_used(source, second) == T0 + timedelta(seconds=1), what="newer")
    assert db_last_used(source, first) == later
    assert cached_last_used(task_cache, first) == later
    wait_for(lambda: not task_cache.pending_last_used(), what="nothing left pending")


BAD_ARGUMENTS = [
    (({"abc": 1.0},), "'abc'"),
    (({"5": "yesterday"},), "'yesterday'"),
    (({"5": True},), "True"),
    (({"0": 1.0},), "'0'"),
    (({"5": -1.0},), "-1.0"),
    ((["5", 1.0],), "['5', 1.0]"),
    ((), "updates"),  # missing
]


def test_bad_update_last_used_arguments_fail_once_with_a_clear_error(
    worker: WorkerProcess, events: EventLog
) -> None:
    # send_task: a client-side signature check would stop a missing argument early.
    sent = {
        app.send_task("tasks.update_last_used", args=list(args)).id: named
        for args, named in BAD_ARGUMENTS
    }
    wait_for(
        lambda: {e.get("uuid") for e in events.of("task-failed")} >= set(sent),
        what="every bad call to fail",
    )
    for task_id, named in sent.items():
        failed = [e for e in events.of("task-failed") if e.get("uuid") == task_id]
        assert len(failed) == 1
        assert named in failed[0]["exception"], failed[0]["exception"]
        assert not [e for e in events.of("task-retried") if e.get("uuid") == task_id]


def test_a_bad_id_in_a_last_use_message_drops_alone_and_is_logged(
    source: SqlSource, task_cache: RedisSchedulerCache, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_accounts(source, task_cache, 1)[0]
    huge = str(2**70)
    long_bad = "x" * 100_000

    # The task's own function, as the worker runs it, on the message's JSON form.
    result = update_last_used({huge: T0.timestamp(), str(good): T0.timestamp(), "7": long_bad})

    assert result["accounts"] == 1
    assert db_last_used(source, good) == T0
    assert cached_last_used(task_cache, good) == T0
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(huge in line for line in warned), warned
    assert any("100,000 characters" in line for line in warned), warned
    assert all(len(line) < 1000 for line in warned)


def test_a_mixed_last_use_message_through_a_worker_applies_every_good_value(
    worker: WorkerProcess, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    first, second = make_accounts(source, task_cache, 2)
    app.send_task(
        "tasks.update_last_used",
        args=[{str(2**70): T0.timestamp(), str(first): T0.timestamp(), str(second): "soon"}],
    )
    wait_for(lambda: db_last_used(source, first) == T0, what="the good value in the database")
    assert db_last_used(source, second) is None
    assert cached_last_used(task_cache, first) == T0
