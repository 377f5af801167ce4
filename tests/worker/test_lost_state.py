"""Redis losing its state (wiped, restarted empty, a garbage outbox position): the
workers notice, rebuild every bucket from the source at once, and do not replay the
outbox from its start."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cache import CorruptKey, RedisSchedulerCache, SchedulerBucket
from tasks import runtime
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tasks.worker.outbox import poll_outbox
from tests.processes import settings_from_env, wait_for
from tests.support import RedisServer, seed_group


def served(cache: RedisSchedulerCache, buckets: list[SchedulerBucket]) -> bool:
    """Every bucket has an active snapshot (many of them empty)."""
    return all(cache.bucket_info(bucket).active_version is not None for bucket in buckets)


def test_exactly_one_of_several_at_once_re_establishes(task_cache: RedisSchedulerCache) -> None:
    barrier = threading.Barrier(8)
    won: list[bool] = []

    def notice() -> None:
        barrier.wait()
        won.append(task_cache.reestablish(None, 42, gaps=[40]))

    threads = [threading.Thread(target=notice) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(won) == [False] * 7 + [True]
    assert task_cache.get_outbox_watermark() == 42 and set(task_cache.outbox_gaps()) == {40}
    epoch = task_cache.epoch()
    assert epoch is not None
    assert not task_cache.reestablish(None, 0)  # the epoch moved on: nothing changes
    assert task_cache.reestablish(epoch, 7) and task_cache.get_outbox_watermark() == 7


@pytest.mark.parametrize("garbage", ["abc", "hash"])
def test_a_garbage_watermark_is_named_and_the_poller_recovers_by_itself(
    configured: Settings,
    task_cache: RedisSchedulerCache,
    source: SqlSource,
    db: SqlWriter,
    garbage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_cache.reestablish(None, 0)
    for n in range(3):
        db.create_account(name=f"a{n}", platform="openai", type="apikey")
    key = task_cache.keys.outbox_watermark
    if garbage == "hash":
        task_cache.client.delete(key)
        task_cache.client.hset(key, "watermark", "12")
    else:
        task_cache.client.set(key, garbage)
    with pytest.raises(CorruptKey, match=key):
        task_cache.get_outbox_watermark()

    result = poll_outbox.apply().get()

    assert result["status"] == "done"
    assert task_cache.get_outbox_watermark() == source.max_outbox_id()
    assert f"{key}" in caplog.text and "re-establishing" in caplog.text
    assert task_cache.stats()["state_reestablished"] == "1"
    assert poll_outbox.apply().get()["status"] == "done"  # and it stays recovered


@pytest.mark.slow
def test_a_redis_restarted_empty_serves_every_bucket_again_within_seconds(
    worker_env: dict[str, str],
    start_worker: Any,
    private_redis: RedisServer,
    source: SqlSource,
    db: SqlWriter,
    tmp_path: Path,
) -> None:
    env = {
        **worker_env,
        "SCHED_REDIS_URL": private_redis.url,
        "SCHED_OUTBOX_INTERVAL_SECONDS": "0.5",
    }  # the periodic refresh stays 300 s away: only the recovery can rebuild in time
    runtime.reset(settings_from_env(env))
    cache = runtime.get_cache()
    for platform in ("openai", "anthropic"):
        seed_group(source, platform=platform)
    start_worker(env, extra_args=("-B", "-s", str(tmp_path / "beat-schedule")))
    buckets = runtime.default_buckets(source)
    wait_for(lambda: served(cache, buckets), what="every bucket served")
    applied_before = int(cache.stats().get("outbox_events_applied", 0))

    private_redis.restart()  # no persistence: an empty Redis, as after a failover
    restarted = time.monotonic()
    wait_for(lambda: served(cache, buckets), timeout=30, interval=0.1, what="served again")
    recovery = time.monotonic() - restarted
    print(f"every bucket served again {recovery:.1f} s after Redis restarted empty")
    assert recovery < 10

    # A full read superseded the replay: the position is the source's, nothing replayed.
    assert cache.get_outbox_watermark() == source.max_outbox_id()
    assert int(cache.stats().get("outbox_events_applied", 0)) <= applied_before
    assert cache.stats()["state_reestablished"] == "1"
