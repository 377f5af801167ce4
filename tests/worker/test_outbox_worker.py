"""The outbox poller through a real worker and a real Redis broker.

Worker processes read their source through ``SCHED_SOURCE_FACTORY`` when a test needs a
slower database than SQLite is: the factories are at the end of this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa

from cache import Account, RedisSchedulerCache, SchedulerBucket
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.source.engine import make_engine
from tasks.source.schema import scheduler_outbox
from tasks.worker.outbox import POLL_LOCK, poll_outbox
from tests.processes import WorkerProcess, wait_for
from tests.support import RedisServer
from tests.worker.conftest import EventLog
from tests.worker.helpers import SLOW_SOURCE, SlowSource

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def established(task_cache: RedisSchedulerCache) -> None:
    """A running system: its state was established before the test writes events, so
    polls apply them one by one (a first poll of a Redis without state would read the
    whole source instead, see test_lost_state.py)."""
    task_cache.reestablish(None, 0)


def drive(
    condition: Callable[[], Any], what: str, timeout: float = 45.0, every: float = 0.5
) -> Any:
    """Send a poll, wait a little for ``condition``, repeat, as beat would."""
    deadline = time.monotonic() + timeout
    while True:
        poll_outbox.delay()
        settle = time.monotonic() + every
        while time.monotonic() < settle:
            value = condition()
            if value:
                return value
            time.sleep(0.05)
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def snapshot_ids(cache: RedisSchedulerCache, bucket: str) -> list[int]:
    accounts = cache.get_snapshot(SchedulerBucket.parse(bucket))
    return [a.id for a in accounts or ()]


def cached(cache: RedisSchedulerCache, account_id: int) -> Account | None:
    return cache.get_account(account_id)


def caught_up(cache: RedisSchedulerCache, source: SqlSource) -> bool:
    return cache.get_outbox_watermark() == source.max_outbox_id() and not cache.outbox_gaps()


def insert_event(engine: sa.Engine, event_id: int | None = None, **values: Any) -> None:
    row = {"event_type": "full_rebuild", "payload": {}, **values}
    if event_id is not None:
        row["id"] = event_id
    with engine.begin() as conn:
        conn.execute(scheduler_outbox.insert().values(**row))


def insert_account(engine: sa.Engine, account_id: int, platform: str = "openai") -> None:
    """An account written with plain SQL, its trigger-written event taken back in the
    same transaction: a row the outbox never tells of (its event id is never seen)."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO accounts (id, name, platform, type) VALUES (:i, :n, :p, 'apikey')"
            ),
            {"i": account_id, "n": f"raw-{account_id}", "p": platform},
        )
        conn.execute(scheduler_outbox.delete().where(scheduler_outbox.c.account_id == account_id))


def test_every_event_type_reaches_the_snapshots_with_beat_driving_the_polls(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    tmp_path: Path,
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    start_worker(
        {**worker_env, "SCHED_OUTBOX_INTERVAL_SECONDS": "0.2"},
        extra_args=("-B", "-s", str(tmp_path / "beat-schedule")),
    )
    group = db.create_group("team", "anthropic")
    mixed = f"{group.id}:anthropic:mixed"
    native = db.create_account(
        name="n", platform="anthropic", type="oauth", priority=1, group_ids=[group.id]
    )
    donor = db.create_account(
        name="d",
        platform="antigravity",
        type="oauth",
        priority=2,
        group_ids=[group.id],
        extra={"mixed_scheduling": True},
    )
    loose = db.create_account(name="o", platform="openai", type="apikey")

    # account_changed (created) and group_changed: the group's buckets and group 0's.
    wait_for(lambda: snapshot_ids(task_cache, mixed) == [native.id, donor.id], what="mixed")
    wait_for(lambda: snapshot_ids(task_cache, "0:openai:single") == [loose.id], what="group 0")

    # account_changed (updated): the disabled account leaves its buckets.
    db.update_account(native.id, status="disabled")
    wait_for(lambda: snapshot_ids(task_cache, mixed) == [donor.id], what="disabled native")

    # account_groups_changed: out of group 0, into the group.
    db.set_account_groups(loose.id, {group.id: 1})
    wait_for(lambda: not snapshot_ids(task_cache, "0:openai:single"), what="left group 0")

    # account_bulk_changed: payloads refreshed, order follows the new priorities.
    db.update_account(native.id, status="active")
    db.bulk_update_accounts([native.id, donor.id], priority=9)
    wait_for(lambda: (cached(task_cache, native.id) or native).priority == 9, what="bulk")
    wait_for(lambda: snapshot_ids(task_cache, mixed) == [native.id, donor.id], what="back")

    # group_changed: a membership another application wrote with plain SQL shows up once
    # the group's event comes.
    extra = db.create_account(name="x", platform="anthropic", type="oauth")
    with source.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO account_groups (account_id, group_id, priority) VALUES (:a, :g, 0)"
            ),
            {"a": extra.id, "g": group.id},
        )
    db.update_group(group.id, name="team-renamed")
    wait_for(lambda: extra.id in snapshot_ids(task_cache, mixed), what="group_changed")

    # account_last_used: the cached time moves forward.
    used = datetime.now(UTC).replace(microsecond=0)
    db.record_last_used_event({donor.id: used})
    wait_for(lambda: (cached(task_cache, donor.id) or donor).last_used_at == used, what="used")

    # full_rebuild: through the refresh, even within the refresh's own interval.
    runs = int(task_cache.stats().get("refresh_runs", 0))
    db.request_full_rebuild()
    wait_for(lambda: int(task_cache.stats().get("refresh_runs", 0)) > runs, what="refresh")

    # A deleted account leaves its buckets. (Its payload is deleted too, but a rebuild
    # of the refresh above that read it before the deletion may write it back; no
    # active snapshot lists it, so no read returns it.)
    db.delete_account(donor.id)
    wait_for(lambda: donor.id not in snapshot_ids(task_cache, mixed), what="deleted")

    wait_for(lambda: caught_up(task_cache, source), what="watermark at the end")
    stats = task_cache.stats()
    assert int(stats["outbox_events_applied"]) == source.max_outbox_id()
    assert stats["outbox_lag"] == "0"
    assert stats["outbox_events_malformed"] == "0"


def test_ids_that_commit_out_of_order_are_applied_and_lost_ones_given_up(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    source: SqlSource,
    task_cache: RedisSchedulerCache,
) -> None:
    # Long enough that event 3 is found before its gap times out, even on a busy machine.
    start_worker({**worker_env, "SCHED_OUTBOX_GAP_TIMEOUT_SECONDS": "6"})
    for account_id in (3, 5):
        insert_account(source.engine, account_id)
    # Event 5 commits first; 3 commits after 5 was applied; 1, 2 and 4 never do.
    insert_event(source.engine, 5, event_type="account_changed", account_id=5)
    drive(lambda: cached(task_cache, 5), what="event 5")
    assert set(task_cache.outbox_gaps()) <= {1, 2, 3, 4}

    insert_event(source.engine, 3, event_type="account_changed", account_id=3)
    drive(lambda: cached(task_cache, 3), what="event 3, committed late")

    drive(lambda: not task_cache.outbox_gaps(), what="the lost ids given up")
    stats = task_cache.stats()
    assert stats["outbox_gaps_resolved"] == "1"
    assert stats["outbox_gaps_given_up"] == "3"
    assert task_cache.get_outbox_watermark() == 5


def test_a_poison_event_does_not_block_the_rest(
    worker: WorkerProcess, source: SqlSource, task_cache: RedisSchedulerCache, db: SqlWriter
) -> None:
    first = db.create_account(name="a", platform="openai", type="apikey")
    insert_event(source.engine, event_type="account_changed", payload={"account_id": "x"})
    insert_event(source.engine, event_type="no_such_event")
    last = db.create_account(name="b", platform="openai", type="apikey")

    drive(lambda: caught_up(task_cache, source), what="the watermark past the poison")
    assert cached(task_cache, first.id) is not None
    assert cached(task_cache, last.id) is not None
    wait_for(
        lambda: snapshot_ids(task_cache, "0:openai:single") == [first.id, last.id],
        what="both accounts in the snapshot",
    )
    assert task_cache.stats()["outbox_events_malformed"] == "2"
    assert "skipping outbox event" in worker.log_tail(20_000)


def test_two_pollers_at_once_do_not_apply_a_batch_twice(
    start_worker: Callable[..., WorkerProcess],
    worker_env: dict[str, str],
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    events: EventLog,
    db: SqlWriter,
) -> None:
    slow = {**worker_env, "SCHED_SOURCE_FACTORY": SLOW_SOURCE}
    start_worker(slow)
    start_worker(slow)  # two workers, two processes each: four pollers could overlap
    ids = [db.create_account(name=f"a{i}", platform="openai", type="apikey").id for i in range(30)]

    for _ in range(3):
        for _ in range(4):
            poll_outbox.delay()
        time.sleep(0.3)
    drive(lambda: caught_up(task_cache, source), what="all events applied")

    # Each event applied once: pollers that overlapped did not both apply a batch.
    assert int(task_cache.stats()["outbox_events_applied"]) == len(ids)
    wait_for(
        lambda: any("busy" in str(e.get("result")) for e in events.of("task-succeeded")),
        what="a poll that found the lock taken and returned at once",
    )


def test_redis_going_away_mid_poll_loses_nothing_and_work_resumes(
    private_redis: RedisServer,
    redis_client: redis.Redis,
    worker_env: dict[str, str],
    configured: Settings,
    start_worker: Callable[..., WorkerProcess],
    source: SqlSource,
    db: SqlWriter,
) -> None:
    """The cache's Redis dies while a poll is between reading events and applying them.

    The broker is another Redis that stays up, so the poll itself fails and retries
    (a broker going away too is the worker's own reconnect, tested with the rebuilds).
    """
    from tasks import runtime

    broker = worker_env["SCHED_REDIS_URL"]
    env = {
        **worker_env,
        "SCHED_BROKER_URL": broker,
        "SCHED_REDIS_URL": private_redis.url,
        "SCHED_SOURCE_FACTORY": SLOW_SOURCE,
    }
    runtime.reset(
        configured.model_copy(update={"redis_url": private_redis.url, "broker_url": broker})
    )
    cache = runtime.get_cache()
    client = redis.Redis.from_url(private_redis.url)
    worker = start_worker(env)
    first = db.create_account(name="a", platform="openai", type="apikey")
    drive(lambda: cached(cache, first.id) and caught_up(cache, source), what="the first event")
    lock = cache.keys.named_lock(POLL_LOCK)
    # No poll queued or running: the next one is the one this test sends.
    wait_for(lambda: redis_client.llen("outbox") == 0 and not client.exists(lock), what="idle")
    client.save()  # what Redis comes back with: the watermark past the first event

    later = [db.create_account(name=f"b{i}", platform="openai", type="apikey").id for i in range(5)]
    poll_outbox.delay()
    wait_for(lambda: client.exists(lock), what="a poll in flight")
    private_redis.stop()  # events read, the slow source still answering
    # Down for longer than the slow read: the poll's writes meet no Redis.
    time.sleep(SlowSource.delay * 2)
    private_redis.start()

    wait_for(
        lambda: all(cached(cache, i) for i in later) and caught_up(cache, source),
        what="the later events applied by the poll's own retry",
        timeout=60,
    )
    log = worker.log_tail(200_000)
    assert "outbox poll failed, nothing advanced" in log
    client.close()


# -- PostgreSQL: two transactions whose outbox ids commit out of order -------------------
def change_in_transaction(conn: sa.Connection, account_id: int, priority: int) -> int:
    conn.execute(
        sa.text("UPDATE accounts SET priority = :p WHERE id = :i"), {"p": priority, "i": account_id}
    )
    return int(
        conn.execute(
            scheduler_outbox.insert()
            .values(event_type="account_changed", account_id=account_id, payload={})
            .returning(scheduler_outbox.c.id)
        ).scalar_one()
    )


def test_postgres_transactions_committing_out_of_order_are_both_applied(
    postgres_url: str,
    worker_env: dict[str, str],
    start_worker: Callable[..., WorkerProcess],
    task_cache: RedisSchedulerCache,
) -> None:
    start_worker({**worker_env, "SCHED_DATABASE_URL": postgres_url})
    source = SqlSource(postgres_url)
    db = SqlWriter(source)
    engine = make_engine(postgres_url)
    try:
        a = db.create_account(name="a", platform="openai", type="apikey")
        b = db.create_account(name="b", platform="openai", type="apikey")
        drive(lambda: caught_up(task_cache, source), what="the first events")

        with engine.connect() as slow, engine.connect() as fast:
            slow_tx = slow.begin()
            low = change_in_transaction(slow, a.id, priority=11)
            with fast.begin():
                high = change_in_transaction(fast, b.id, priority=22)
            assert low < high

            # The higher id is applied while the lower one is still uncommitted.
            drive(
                lambda: (
                    (cached(task_cache, b.id) or b).priority == 22
                    and task_cache.get_outbox_watermark() == high
                ),
                what="the higher id",
            )
            assert low in task_cache.outbox_gaps()
            slow_tx.commit()

        drive(lambda: (cached(task_cache, a.id) or a).priority == 11, what="the lower id")
        drive(lambda: not task_cache.outbox_gaps(), what="the gap resolved")
    finally:
        source.close()
        engine.dispose()


# -- sources for worker processes (SCHED_SOURCE_FACTORY) --------------------------------
