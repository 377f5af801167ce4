"""Outbox retention: the beat job that deletes applied ``scheduler_outbox`` rows.

A row may go once it is applied (at or below the watermark, and below every id still
missing, whose row may yet commit) and older than ``outbox_retention_seconds``. Rows
are deleted in bounded batches, so a first run over a year of rows holds no long lock
on the table, and under a named lock, so two beats do not delete side by side.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from celery import Task

from cache import CacheError, utc_now
from tasks import stats
from tasks.celery import app
from tasks.runtime import get_cache, get_source, settings
from tasks.worker.retry import RetryingTask

logger = logging.getLogger(__name__)

PRUNE_LOCK = "outbox-prune"
# Rows per DELETE: small enough that one statement is quick on either database.
PRUNE_BATCH = 1_000


@runtime_checkable
class PrunesOutbox(Protocol):
    def prune_outbox(self, up_to_id: int, before: datetime, limit: int) -> int: ...


@app.task(name="tasks.prune_outbox", bind=True, base=RetryingTask)  # type: ignore[untyped-decorator]
def prune_outbox(self: Task) -> dict[str, Any]:
    """Beat, hourly: delete applied outbox rows older than the retention."""
    config = settings()
    if config.outbox_retention_seconds == 0:
        return {"status": "off", "deleted": 0}
    source = get_source()
    if not isinstance(source, PrunesOutbox):
        return {"status": "unsupported", "deleted": 0}
    cache = get_cache()
    ttl = config.lock_ttl_seconds
    token = cache.try_lock(PRUNE_LOCK, ttl, token=self.request.id)
    if token is None:
        return {"status": "busy", "deleted": 0}
    try:
        watermark = cache.get_outbox_watermark()
        up_to = min([watermark, *(gap - 1 for gap in cache.outbox_gaps())])
        before = utc_now() - timedelta(seconds=config.outbox_retention_seconds)
        # Well within the lock TTL and the task's time limit.
        deadline = time.monotonic() + min(ttl, config.rebuild_time_limit_seconds) / 3
        deleted = 0
        while up_to > 0:
            batch = source.prune_outbox(up_to, before, PRUNE_BATCH)
            deleted += batch
            if batch < PRUNE_BATCH or time.monotonic() > deadline:
                break
            cache.try_lock(PRUNE_LOCK, ttl, token=token)
    finally:
        try:
            cache.unlock(PRUNE_LOCK, token)
        except CacheError as exc:
            logger.warning("could not release lock %s: %s", PRUNE_LOCK, exc)
    cache.record_stats({stats.OUTBOX_ROWS_PRUNED: deleted})
    if deleted:
        logger.info("outbox: deleted %d applied rows up to id %d", deleted, up_to)
    return {"status": "done", "deleted": deleted, "up_to": up_to}
