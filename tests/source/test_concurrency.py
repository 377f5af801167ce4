"""Several writers at once: out-of-order outbox commits, processes sharing SQLite,
overlapping last-use batches."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from tasks.source import SqlSource, SqlWriter
from tasks.source.schema import accounts, init_schema, scheduler_outbox

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
# Generous: two shared cores, and other suites may be running.
JOIN_TIMEOUT = 120.0


def insert_event(conn: sa.Connection, event_type: str) -> int:
    result = conn.execute(scheduler_outbox.insert().values(event_type=event_type, payload={}))
    return int(result.inserted_primary_key[0])  # type: ignore[index]


def test_outbox_ids_committed_out_of_order_are_all_visible(pg_url: str) -> None:
    """The lower id commits last: a reader that already saw the higher one can still
    find the lower one, by range and by id, once it commits."""
    source = SqlSource(init_schema(pg_url))
    slow, fast = source.engine.connect(), source.engine.connect()
    try:
        slow_tx = slow.begin()
        low = insert_event(slow, "account_changed")
        fast_tx = fast.begin()
        high = insert_event(fast, "group_changed")
        assert low < high
        fast_tx.commit()

        assert [e.id for e in source.outbox_after(0, 10)] == [high]
        assert [e.id for e in source.outbox_by_ids([low, high])] == [high]
        assert source.max_outbox_id() == high

        slow_tx.commit()

        assert [e.id for e in source.outbox_after(0, 10)] == [low, high]
        assert [e.id for e in source.outbox_by_ids([low])] == [low]
        assert source.outbox_after(high, 10) == []  # why a watermark alone would skip it
    finally:
        slow.close()
        fast.close()
        source.close()


def _write_in_another_process(url: str, account_id: int, rounds: int) -> None:
    source = SqlSource(url)
    try:
        for n in range(rounds):
            SqlWriter(source).update_account(account_id, priority=n % 10, concurrency=n)
            at = T0 + timedelta(milliseconds=n)
            source.update_last_used({1: at, 2: at})
            source.get_accounts([1, 2])
    finally:
        source.close()


def test_two_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    """A worker and a web app writing the same SQLite file at once: no 'database is
    locked', every change and every event kept."""
    url = f"sqlite:///{tmp_path}/shared.sqlite3"
    source = SqlSource(init_schema(url))
    db = SqlWriter(source)
    db.create_account(id=1, name="a", platform="openai", type="apikey")
    db.create_account(id=2, name="b", platform="openai", type="apikey")
    mark = source.max_outbox_id()
    rounds = 60
    spawn = multiprocessing.get_context("spawn")
    processes = [
        spawn.Process(target=_write_in_another_process, args=(url, account_id, rounds))
        for account_id in (1, 2)
    ]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.join(JOIN_TIMEOUT)
        assert [p.exitcode for p in processes] == [0, 0]
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join(10)

    accounts = source.get_accounts([1, 2])
    events = source.outbox_after(mark, 1000)
    source.close()
    assert len(events) == 2 * rounds
    assert [a.concurrency for a in accounts.values()] == [rounds - 1, rounds - 1]
    last = T0 + timedelta(milliseconds=rounds - 1)
    assert [a.last_used_at for a in accounts.values()] == [last, last]


def test_overlapping_last_used_batches_keep_the_latest(db_url: str) -> None:
    source = SqlSource(init_schema(db_url))
    with source.engine.begin() as conn:
        conn.execute(
            accounts.insert(),
            [
                {"id": i, "name": f"a{i}", "platform": "openai", "type": "apikey"}
                for i in range(1, 201)
            ],
        )
    errors: list[BaseException] = []

    def flush(offset: int) -> None:
        try:
            for n in range(20):
                # Each thread walks the ids in another order; the source sorts them.
                ids = list(range(1, 201))[offset:] + list(range(1, 201))[:offset]
                at = T0 + timedelta(seconds=n, milliseconds=offset)
                source.update_last_used({i: at for i in ids})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=flush, args=(offset,)) for offset in (0, 50, 100, 150)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    try:
        assert errors == [] and not any(t.is_alive() for t in threads)
        final = {a.last_used_at for a in source.get_accounts(range(1, 201)).values()}
        assert final == {T0 + timedelta(seconds=19, milliseconds=150)}
    finally:
        source.close()


def test_concurrent_updates_of_one_account_each_get_a_revision(db_url: str) -> None:
    source = SqlSource(init_schema(db_url))
    db = SqlWriter(source)
    start = db.create_account(id=1, name="a", platform="openai", type="apikey").revision
    assert start is not None
    revisions: list[int] = []
    lock = threading.Lock()

    def update(n: int) -> None:
        for k in range(10):
            revision = db.update_account(1, concurrency=n * 100 + k).revision
            assert revision is not None
            with lock:
                revisions.append(revision)

    threads = [threading.Thread(target=update, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)
    try:
        assert sorted(revisions) == list(range(start + 1, start + 41))
    finally:
        source.close()


def test_init_schema_run_at_once_by_several_processes_settles(db_url: str) -> None:
    """`sched db init` from a worker start and an operator at the same moment."""
    errors: list[BaseException] = []

    def init() -> None:
        try:
            init_schema(db_url).dispose()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=init) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_TIMEOUT)

    assert errors == [] and not any(t.is_alive() for t in threads)
    source = SqlSource(db_url)
    db = SqlWriter(source)
    try:
        first = db.create_account(name="a", platform="openai", type="apikey").revision
        assert first is not None
        assert db.update_account(1, priority=1).revision == first + 1  # one trigger
    finally:
        source.close()
