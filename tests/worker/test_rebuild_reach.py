"""A rebuild that reads a change before the outbox does puts it into the other
buckets' versions before its own version activates."""

from __future__ import annotations

from datetime import UTC, datetime

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.source import SqlSource, SqlWriter
from tasks.worker.rebuild import _rebuild_locked


def test_a_rebuild_that_reads_a_move_first_removes_it_from_the_group_it_left(
    source: SqlSource, db: SqlWriter, task_cache: RedisSchedulerCache
) -> None:
    db.create_group("g5", "openai", id=5)
    db.create_group("g6", "openai", id=6)
    account = db.create_account(name="o", platform="openai", type="apikey", group_ids=[5])
    group_5, group_6 = (SchedulerBucket(g, "openai", "single") for g in (5, 6))
    accounts = source.accounts_for_bucket(group_5, datetime.now(UTC))
    task_cache.set_snapshot(group_5, accounts, task_cache.reserve_version(group_5))

    moved = db.set_account_groups(account.id, {6: 1})  # the outbox has not seen it yet
    _rebuild_locked(task_cache, group_6)

    in_6 = task_cache.get_snapshot(group_6) or []
    assert [(a.id, a.revision) for a in in_6] == [(account.id, moved.revision)]
    # Never the new revision in group 6 and the old one in group 5 at once.
    read = task_cache.read_snapshot(group_5)
    assert read is not None and read.accounts == []
