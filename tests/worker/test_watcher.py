"""The SQLite outbox watcher and beat's gated entries, in-process: what they nudge or
send, and when; and a real worker whose watcher brings a plain SQL change at once."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from cache import RedisSchedulerCache
from tasks.celery import beat_schedule
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.worker.outbox import POLL_LOCK
from tasks.worker.schedules import WhenPending, last_use_pending
from tasks.worker.watcher import OutboxWatcher
from tests.processes import WorkerProcess, wait_for
from tests.support import snapshot_ids
from tests.worker.helpers import SLOW_SOURCE
from tests.worker.test_wakeup import BUCKET, set_status, two_accounts


class Nudges:
    def __init__(self) -> None:
        self.count = 0

    def nudge(self) -> None:
        self.count += 1


def watcher(read_end: Callable[[], int], nudges: Nudges, **options: float) -> OutboxWatcher:
    options = {"interval": 0.01, "fallback_seconds": 0.2, **options}
    return OutboxWatcher(read_end, nudges, **options)  # type: ignore[arg-type]


def test_the_watcher_nudges_on_its_first_read_and_then_only_when_the_end_moved() -> None:
    ends = iter([5, 5, 5, 7, 7, 9])
    nudges = Nudges()
    w = watcher(lambda: next(ends), nudges)
    assert [w.check() for _ in range(6)] == [True, False, False, True, False, True]
    assert nudges.count == 3


def test_a_nudge_that_came_to_nothing_is_sent_again_until_the_poll_applied_the_end() -> None:
    # A poll running since before the commit held the lock: the nudged one returned busy.
    now = [0.0]
    applied = [3]
    looks: list[int] = []

    def read_applied() -> int:
        looks.append(applied[0])
        return applied[0]

    nudges = Nudges()
    w = watcher(lambda: 5, nudges, confirm_seconds=0.5)
    w.read_applied, w.clock = read_applied, lambda: now[0]
    assert w.check() and nudges.count == 1
    now[0] = 0.3
    assert not w.check() and not looks  # too soon to ask
    now[0] = 0.6
    assert w.check() and nudges.count == 2 and looks == [3]  # still short: again
    applied[0] = 5
    now[0] = 1.2
    assert not w.check() and looks == [3, 5]  # applied: confirmed
    now[0] = 5.0
    assert not w.check() and looks == [3, 5]  # idle: no more Redis reads
    assert nudges.count == 2


def test_a_watcher_that_cannot_read_polls_at_the_fallback_rate_and_recovers() -> None:
    failing = threading.Event()
    failing.set()

    def read_end() -> int:
        if failing.is_set():
            raise OSError("disk I/O error")
        return 1

    nudges = Nudges()
    w = watcher(read_end, nudges, fallback_seconds=0.2)
    w.start()
    try:
        time.sleep(0.5)
        # At the fallback rate, not at every read (every 10 ms: about 50).
        assert 2 <= nudges.count <= 4
        failing.clear()
        wait_for(lambda: w.reads > 0, what="a good read")
        settled = nudges.count
        time.sleep(0.2)
        assert nudges.count == settled
        assert w.alive
    finally:
        w.stop()
    assert not w.alive


def test_the_watcher_runs_only_on_sqlite_with_wakeups_and_lets_beat_back_off() -> None:
    sqlite = Settings(database_url="sqlite:///x.sqlite3")
    assert sqlite.watches_outbox and sqlite.outbox_poll_seconds == sqlite.outbox_backstop_seconds
    for off in (
        Settings(database_url="sqlite:///x.sqlite3", outbox_watch_seconds=0),
        Settings(database_url="sqlite:///x.sqlite3", outbox_wakeup=False),
    ):
        assert not off.watches_outbox and off.outbox_poll_seconds == off.outbox_interval_seconds
    postgres = Settings(database_url="postgresql+psycopg://h/db")
    assert not postgres.watches_outbox and postgres.wakes_on_commit


# -- beat's gated entries --------------------------------------------------------------
def probe_yes() -> bool:
    return True


def probe_no() -> bool:
    return False


def probe_broken() -> bool:
    raise ConnectionError("Redis down")


@pytest.mark.parametrize(("probe", "sent"), [(probe_yes, True), (probe_no, False)])
def test_a_gated_entry_is_due_only_when_its_probe_finds_work(
    probe: Callable[[], bool], sent: bool
) -> None:
    now = datetime.now(UTC)
    entry = WhenPending(10, probe, nowfun=lambda: now)
    due, wait = entry.is_due(now - timedelta(seconds=11))
    assert due is sent
    assert wait == 10  # skipped: looked at again one interval on
    assert entry.is_due(now - timedelta(seconds=3)) == (False, pytest.approx(7, abs=0.01))


def test_a_gated_entry_whose_probe_fails_sends_the_task() -> None:
    now = datetime.now(UTC)
    entry = WhenPending(10, probe_broken, nowfun=lambda: now)
    assert entry.is_due(now - timedelta(seconds=11)).is_due


def test_a_gated_entry_survives_beats_shelve() -> None:
    entry = WhenPending(10, probe_no)
    again = pickle.loads(pickle.dumps(entry))
    assert again == entry and again.probe is probe_no and again.seconds == 10


def test_beat_flushes_last_use_only_when_some_is_pending(
    task_cache: RedisSchedulerCache,
) -> None:
    entry = beat_schedule(Settings())["flush-last-used"]["schedule"]
    assert isinstance(entry, WhenPending) and entry.probe is last_use_pending
    assert not last_use_pending()
    task_cache.update_last_used({7: datetime.now(UTC)}, record_pending=True)
    assert last_use_pending()


# -- a real worker ---------------------------------------------------------------------
def test_a_plain_sql_change_reaches_the_snapshot_through_the_watcher(
    source: SqlSource,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
    tmp_path: Path,
) -> None:
    # No beat: nothing but the watcher sends polls.
    start_worker({**worker_env, "SCHED_OUTBOX_WATCH_SECONDS": "0.2"})
    ids = two_accounts(source)
    wait_for(lambda: snapshot_ids(task_cache, BUCKET) == ids, what="the accounts", timeout=5)
    took = []
    for status, expected in (("disabled", ids[:-1]), ("active", ids)) * 3:
        committed = set_status(source, ids[-1], status)
        wait_for(lambda e=expected: snapshot_ids(task_cache, BUCKET) == e, timeout=5)  # type: ignore[misc]
        took.append(time.monotonic() - committed)
    print(f"plain SQL -> snapshot through the watcher: {[f'{t:.3f}' for t in took]}")
    assert max(took) < 2.0


def test_a_commit_during_a_running_poll_is_applied_without_waiting_for_beat(
    source: SqlSource,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
    redis_client: redis.Redis,
) -> None:
    # Slow polls (each account read takes 0.6 s) and no beat at all: a commit made while
    # a poll runs, after its read of the outbox, is nudged into a poll that finds the
    # lock held and returns; only the watcher's second look brings it.
    env = {**worker_env, "SCHED_OUTBOX_WATCH_SECONDS": "0.05", "SCHED_SOURCE_FACTORY": SLOW_SOURCE}
    start_worker(env)
    ids = two_accounts(source)
    # A third: the bucket stays non-empty (an empty snapshot is a miss).
    ids.append(SqlWriter(source).create_account(name="c", platform="openai", type="apikey").id)
    wait_for(lambda: snapshot_ids(task_cache, BUCKET) == ids, what="the accounts")
    lock = task_cache.keys.named_lock(POLL_LOCK)
    wait_for(lambda: not redis_client.exists(lock), what="no poll running")

    set_status(source, ids[0], "disabled")
    wait_for(lambda: redis_client.exists(lock), interval=0.005, what="its poll running")
    time.sleep(0.2)  # past its read of the outbox, in its slow account read
    committed = set_status(source, ids[-1], "disabled")
    # Applied by a poll (not only read by the rebuild the first change started).
    end = source.max_outbox_id()
    wait_for(lambda: task_cache.get_outbox_watermark() >= end, timeout=10, what="applied")
    took = time.monotonic() - committed
    print(f"commit during a running poll -> snapshot {took:.2f}s")
    assert took < 3.0
