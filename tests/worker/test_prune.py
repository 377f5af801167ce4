"""Outbox retention: applied rows older than the retention go, in batches; nothing
unapplied, recent or still missing below the watermark does."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cache import RedisSchedulerCache
from tasks import runtime
from tasks.celery import TASK_QUEUES, celery_config
from tasks.settings import Settings
from tasks.source import SqlSource
from tasks.source.schema import scheduler_outbox
from tasks.worker.prune import prune_outbox
from tests.processes import wait_for
from tests.worker.test_beat import beat


def write_rows(source: SqlSource, ages_in_hours: list[float]) -> None:
    now = datetime.now(UTC)
    with source.engine.begin() as conn:
        for age in ages_in_hours:
            conn.execute(
                scheduler_outbox.insert().values(
                    event_type="full_rebuild", payload={}, created_at=now - timedelta(hours=age)
                )
            )


def remaining(source: SqlSource) -> list[int]:
    with source.engine.connect() as conn:
        return list(conn.execute(sa.select(scheduler_outbox.c.id).order_by("id")).scalars())


def test_applied_rows_older_than_the_retention_are_deleted(
    configured: Settings, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    write_rows(source, [48, 47, 46, 45, 44, 1, 0.5])  # ids 1..7
    stats = source.outbox_stats()
    assert stats.rows == 7
    age = stats.oldest_age_seconds(datetime.now(UTC))
    assert age is not None and 47 * 3600 < age < 49 * 3600
    # Applied up to 6, but 4 is still missing (its transaction may yet commit).
    task_cache.reestablish(None, 6, gaps=[4])

    assert prune_outbox.apply().get()["deleted"] == 3
    assert remaining(source) == [4, 5, 6, 7]  # 5: above a gap; 6, 7: too recent

    task_cache.advance_outbox(6, resolved_gaps=[4])
    assert prune_outbox.apply().get()["deleted"] == 2
    assert remaining(source) == [6, 7]
    assert task_cache.stats()["outbox_rows_pruned"] == "5"


def test_a_retention_of_zero_keeps_everything(
    configured: Settings, source: SqlSource, task_cache: RedisSchedulerCache
) -> None:
    runtime.reset(configured.model_copy(update={"outbox_retention_seconds": 0}))
    write_rows(source, [48, 47])
    task_cache.reestablish(None, 2)
    assert prune_outbox.apply().get() == {"status": "off", "deleted": 0}
    assert remaining(source) == [1, 2]


def test_the_prune_runs_on_the_outbox_queue_from_beat() -> None:
    assert TASK_QUEUES["tasks.prune_outbox"] == "outbox"
    schedule = celery_config(Settings())["beat_schedule"]["prune-outbox"]
    assert schedule["task"] == "tasks.prune_outbox"
    assert Settings().outbox_retention_seconds == 86_400


@pytest.mark.parametrize("batch", [2])
def test_a_long_backlog_goes_in_bounded_batches(
    configured: Settings,
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    batch: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("tasks.worker.prune.PRUNE_BATCH", batch)
    write_rows(source, [48] * 7)
    task_cache.reestablish(None, 7)
    assert prune_outbox.apply().get()["deleted"] == 7
    assert remaining(source) == []


@pytest.mark.parametrize(
    ("retention", "every"),
    [(0, 3600.0), (0.5, 1.0), (3, 1.5), (600, 300.0), (86_400, 3600.0), (10**7, 3600.0)],
)
def test_the_prune_interval_follows_the_retention(retention: float, every: float) -> None:
    # At least twice per retention window (never more than once a second), at least
    # hourly: a row is gone within 1.5 windows of its writing (plus a run's time).
    settings = Settings(outbox_retention_seconds=retention)
    schedule = celery_config(settings)["beat_schedule"]["prune-outbox"]
    assert schedule["schedule"] == every
    assert schedule["options"]["expires"] == every


@pytest.mark.slow
def test_beat_honours_a_short_retention(
    worker_env: dict[str, str],
    start_worker: Any,
    source: SqlSource,
    task_cache: RedisSchedulerCache,
    tmp_path: Path,
) -> None:
    env = {
        **worker_env,
        "SCHED_OUTBOX_RETENTION_SECONDS": "3",
        "SCHED_OUTBOX_INTERVAL_SECONDS": "0.2",
        # Only the outbox is under test here.
        "SCHED_REFRESH_INTERVAL_SECONDS": "3600",
        "SCHED_LAST_USED_DB_FLUSH_SECONDS": "3600",
    }
    start_worker(env)
    service = beat(env, tmp_path, "beat")
    try:
        write_rows(source, [0, 0, 0])
        written = time.monotonic()
        wait_for(lambda: task_cache.get_outbox_watermark() == 3, what="rows applied")
        wait_for(lambda: remaining(source) == [], timeout=30, what="rows pruned")
        elapsed = time.monotonic() - written
    finally:
        service.stop(timeout=10)
    # Retention 3 s, a prune every 1.5 s: gone within 4.5 s of writing, plus the time a
    # beat tick takes to reach the worker and run (an hourly prune would take an hour).
    assert 3 <= elapsed < 9, elapsed
