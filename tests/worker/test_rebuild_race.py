"""A change made while a rebuild runs is in the final snapshot (the reference lost it)."""

from __future__ import annotations

from typing import Any

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.source import SqlSource, SqlWriter
from tasks.web.requests import request_rebuild
from tests.processes import wait_for
from tests.support import seed_group, snapshot_ids
from tests.worker.conftest import Gate

pytestmark = pytest.mark.slow


def test_a_change_during_a_rebuild_is_in_the_final_snapshot(
    gated_env: dict[str, str],
    start_worker: Any,
    gate: Gate,
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    db: SqlWriter,
) -> None:
    start_worker(gated_env)
    group = seed_group(source, accounts=3)
    bucket = SchedulerBucket(group.id, "openai", "single")

    assert request_rebuild(bucket) is True
    # Timeline: rebuild 1 has begun and read 3 accounts; it has not written yet.
    _, read_bucket, count = gate.wait_read()
    assert (read_bucket, count) == (str(bucket), 3)

    added = db.create_account(
        name="late", platform="openai", type="apikey", group_ids={group.id: 1}
    )
    # The reference skipped this request (lock busy, counted as done); here it queues
    # exactly one more rebuild.
    assert request_rebuild(bucket) is True
    assert request_rebuild(bucket) is False

    gate.open()  # rebuild 1 writes its snapshot: 3 accounts, without the new one
    _, read_bucket, count = gate.wait_read()  # rebuild 2 has read again
    assert (read_bucket, count) == (str(bucket), 4)
    gate.open()

    def late_account_in_snapshot() -> list[int] | None:
        ids = snapshot_ids(task_cache, bucket)
        return ids if ids and added.id in ids else None

    final = wait_for(late_account_in_snapshot, what="the late account in the snapshot")
    assert len(final) == 4
    # Its figures are recorded just after the write.
    wait_for(lambda: task_cache.stats().get("rebuilds") == "2", what="two rebuilds counted")
