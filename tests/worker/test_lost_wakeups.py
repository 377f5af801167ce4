"""A lost wake-up delays a change by at most one backstop interval.

Each test first shows the wake-up path working (a change arrives well under a second),
then breaks it (the listener's thread killed, its connection cut, a commit that never
notifies, the SQLite watcher killed or stuck) and commits just after a beat poll ran:
the change then arrives with beat's next poll, one backstop later, not sooner (it did
not come by a wake-up) and not later (the backstop covers it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from cache import RedisSchedulerCache
from tasks.source import SqlSource
from tasks.worker.listener import APPLICATION_NAME
from tasks.worker.outbox import POLL_LOCK
from tasks.worker.watcher import THREAD_NAME as WATCHER_THREAD
from tests.processes import WorkerProcess, wait_for
from tests.support import snapshot_ids
from tests.worker.helpers import SLOW_SOURCE
from tests.worker.test_wakeup import (
    BUCKET,
    LONG_BACKSTOP,
    listener_pid,
    listening_worker,
    set_status,
    two_accounts,
)
from tests.worker.thread_faults import order

BACKSTOP = 2.0
# A wake-up takes a poll and a rebuild: tens of milliseconds, under a second on a busy
# machine. Beat's next poll after a commit made just after one is a backstop away.
WAKEUP_BOUND = 1.0
MARGIN = 3.0
FAULTS = ("-I", "tests.worker.thread_faults")


def polls(cache: RedisSchedulerCache) -> int:
    return int(cache.stats().get("outbox_polls", 0))


def with_beat(tmp_path: Path) -> tuple[str, ...]:
    return ("-B", "-s", str(tmp_path / "beat-schedule"), *FAULTS)


def arrives(cache: RedisSchedulerCache, ids: list[int], write: Callable[[], float]) -> float:
    """Seconds from ``write``'s commit (disabling the last of ``ids``) to the snapshot
    without it, then enables it again and waits for that too."""
    committed = write()
    bound = BACKSTOP + MARGIN
    wait_for(lambda: snapshot_ids(cache, BUCKET) == ids[:-1], timeout=bound, what="the change")
    return time.monotonic() - committed


def by_wakeup(source: SqlSource, cache: RedisSchedulerCache, ids: list[int]) -> float:
    took = arrives(cache, ids, lambda: set_status(source, ids[-1], "disabled"))
    set_status(source, ids[-1], "active")
    wait_for(lambda: snapshot_ids(cache, BUCKET) == ids, what="back")
    return took


def by_backstop(source: SqlSource, cache: RedisSchedulerCache, ids: list[int]) -> float:
    """Commit just after a beat poll: only beat's next poll, a backstop later, sees it."""
    seen = polls(cache)
    wait_for(lambda: polls(cache) > seen, timeout=BACKSTOP + MARGIN, what="a beat poll")
    took = arrives(cache, ids, lambda: set_status(source, ids[-1], "disabled"))
    set_status(source, ids[-1], "active")
    wait_for(lambda: snapshot_ids(cache, BUCKET) == ids, timeout=BACKSTOP + MARGIN, what="back")
    return took


def assert_backstop_bound(took: float) -> None:
    assert took > BACKSTOP / 2, f"{took:.2f}s: sooner than beat's next poll (a wake-up?)"
    assert took < BACKSTOP + MARGIN, f"{took:.2f}s: more than one backstop interval"


# -- PostgreSQL: the listener ---------------------------------------------------------
def test_a_killed_listener_thread_costs_at_most_one_backstop(
    pg: SqlSource,
    channel: str,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    worker, _, ids = listening_worker(
        pg,
        channel,
        worker_env,
        start_worker,
        task_cache,
        options={"extra_args": with_beat(tmp_path)},
        SCHED_OUTBOX_BACKSTOP_SECONDS=str(BACKSTOP),
    )
    assert by_wakeup(pg, task_cache, ids) < WAKEUP_BOUND

    order(redis_client, f"kill:{APPLICATION_NAME}")
    wait_for(lambda: listener_pid(pg, channel) is None, what="the listener's session gone")
    took = [by_backstop(pg, task_cache, ids) for _ in range(2)]
    print(f"listener dead: commit -> snapshot {took}")
    for each in took:
        assert_backstop_bound(each)
    assert worker.alive()


def test_a_commit_while_the_listener_reconnects_is_polled_at_once(
    pg: SqlSource,
    channel: str,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
) -> None:
    # No beat: only the listener (and its reconnect) sends polls.
    _, first, ids = listening_worker(
        pg,
        channel,
        worker_env,
        start_worker,
        task_cache,
        SCHED_OUTBOX_BACKSTOP_SECONDS=str(LONG_BACKSTOP),
    )

    def cut_then_commit() -> float:
        # The notification of this commit goes to no one: the session is gone, and
        # the new one is not listening yet.
        with pg.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first})
        return set_status(pg, ids[-1], "disabled")

    took = arrives(task_cache, ids, cut_then_commit)
    print(f"commit during the reconnect -> snapshot {took:.3f}s")
    assert took < WAKEUP_BOUND
    # Its session's last statement may be another for a moment (the listener reads the
    # outbox's end too): look until it shows.
    wait_for(lambda: listener_pid(pg, channel) not in (None, first), what="a new listener session")


def test_a_commit_that_does_not_notify_costs_at_most_one_backstop(
    pg: SqlSource,
    channel: str,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
    tmp_path: Path,
) -> None:
    _, _, ids = listening_worker(
        pg,
        channel,
        worker_env,
        start_worker,
        task_cache,
        options={"extra_args": with_beat(tmp_path)},
        SCHED_OUTBOX_BACKSTOP_SECONDS=str(BACKSTOP),
    )
    assert by_wakeup(pg, task_cache, ids) < WAKEUP_BOUND

    # A writer whose commits do not notify: the outbox row is written, no NOTIFY sent.
    with pg.engine.begin() as conn:
        conn.execute(sa.text("DROP TRIGGER scheduler_outbox_notify ON scheduler_outbox"))
    took = [by_backstop(pg, task_cache, ids) for _ in range(2)]
    print(f"no NOTIFY: commit -> snapshot {took}")
    for each in took:
        # No lower bound here: the listener's second look at the outbox's end, after
        # the notifications just before, may find such a commit sooner than beat.
        assert each < BACKSTOP + MARGIN, f"{each:.2f}s: more than one backstop interval"
    assert listener_pid(pg, channel) is not None  # the listener was fine all along


def test_a_commit_during_a_running_poll_is_applied_without_waiting_for_beat(
    pg: SqlSource,
    channel: str,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
    redis_client: redis.Redis,
) -> None:
    # Slow polls (each account read takes 0.6 s), no beat: the notification of a commit
    # made while a poll runs, after its read of the outbox, nudges a poll that finds the
    # lock held and returns; only the listener's second look brings it.
    _, _, ids = listening_worker(
        pg, channel, worker_env, start_worker, task_cache, SCHED_SOURCE_FACTORY=SLOW_SOURCE
    )
    lock = task_cache.keys.named_lock(POLL_LOCK)
    wait_for(lambda: not redis_client.exists(lock), what="no poll running")

    set_status(pg, ids[0], "disabled")
    wait_for(lambda: redis_client.exists(lock), interval=0.005, what="its poll running")
    time.sleep(0.2)  # past its read of the outbox, in its slow account read
    committed = set_status(pg, ids[-1], "disabled")
    end = pg.max_outbox_id()
    wait_for(lambda: task_cache.get_outbox_watermark() >= end, timeout=10, what="applied")
    took = time.monotonic() - committed
    print(f"commit during a running poll -> applied {took:.2f}s")
    assert took < 3.0


# -- SQLite: the watcher --------------------------------------------------------------
@pytest.mark.parametrize("fault", ["kill", "stick"])
def test_a_dead_or_stuck_watcher_costs_at_most_one_backstop(
    fault: str,
    source: SqlSource,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    env = {
        **worker_env,
        "SCHED_OUTBOX_WATCH_SECONDS": "0.2",
        "SCHED_OUTBOX_BACKSTOP_SECONDS": str(BACKSTOP),
    }
    worker = start_worker(env, extra_args=with_beat(tmp_path))
    ids = two_accounts(source)
    wait_for(lambda: snapshot_ids(task_cache, BUCKET) == ids, what="the accounts")
    # A plain SQL change: nothing but the watcher tells the worker of it.
    assert by_wakeup(source, task_cache, ids) < WAKEUP_BOUND

    order(redis_client, f"kill:{WATCHER_THREAD}" if fault == "kill" else "stick:watcher")
    took = [by_backstop(source, task_cache, ids) for _ in range(2)]
    print(f"watcher {fault}: commit -> snapshot {took}")
    for each in took:
        assert_backstop_bound(each)
    assert worker.alive()
