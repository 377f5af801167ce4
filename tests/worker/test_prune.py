"""Outbox retention: applied rows older than the retention go, in batches; nothing
unapplied, recent or still missing below the watermark does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

import celeryconfig
from cache import RedisSchedulerCache
from tasks import runtime
from tasks.celery import TASK_QUEUES
from tasks.settings import Settings
from tasks.source import SqlSource
from tasks.source.schema import scheduler_outbox
from tasks.worker.prune import prune_outbox


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
    assert celeryconfig.beat_schedule["prune-outbox"]["task"] == "tasks.prune_outbox"
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
