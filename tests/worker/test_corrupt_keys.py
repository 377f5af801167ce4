"""Keys of the wrong Redis type under the writers: the next write deletes and names
them, then succeeds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cache import RedisSchedulerCache, SchedulerBucket
from tasks.settings import Settings
from tasks.source import SqlSource
from tasks.web.last_used import LastUsedBatcher
from tasks.worker.last_used import update_last_used
from tasks.worker.rebuild import rebuild_bucket
from tests.support import seed_group, snapshot_ids

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("which", ["meta", "last_used", "lock"])
def test_a_rebuild_repairs_a_key_of_the_wrong_type_and_names_it(
    configured: Settings,
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    which: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = seed_group(source)
    bucket = SchedulerBucket(group.id, "openai", "single")
    key = {
        "meta": task_cache.keys.meta(bucket),
        "last_used": task_cache.keys.last_used,
        "lock": task_cache.keys.lock(bucket),
    }[which]
    task_cache.client.hset(key, "x", "1")  # a hash where a string is, or the reverse
    if which != "lock":
        task_cache.client.delete(key)
        task_cache.client.set(key, "garbage")

    rebuild_bucket.apply(args=[str(bucket)]).get()

    assert snapshot_ids(task_cache, bucket) is not None
    assert key in caplog.text
    assert task_cache.stats()["keys_repaired"] == "1"


def test_a_last_use_write_repairs_a_store_of_the_wrong_type_and_names_it(
    configured: Settings, task_cache: RedisSchedulerCache, caplog: pytest.LogCaptureFixture
) -> None:
    task_cache.client.set(task_cache.keys.last_used_pending, "garbage")
    batcher = LastUsedBatcher(task_cache, interval_seconds=3600)
    batcher.touch(7, T0)
    assert batcher.flush() == 0  # refused, kept, and the key deleted
    assert task_cache.keys.last_used_pending in caplog.text
    assert batcher.flush() == 1
    assert task_cache.pending_last_used() == {7: T0}

    task_cache.client.delete(task_cache.keys.last_used)
    task_cache.client.set(task_cache.keys.last_used, "garbage")
    assert update_last_used.apply(args=[{"7": T0.timestamp()}]).get()["accounts"] == 1
