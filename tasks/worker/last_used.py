"""Last use of accounts on the worker side: ``update_last_used`` and the beat job that
moves the cache's pending times into the database (see :mod:`tasks.web.last_used` for
the web side).

    .. every ~10 s ..          tasks.flush_last_used (beat): pending -> database in
                               one batch -> ack (entries touched again stay pending)

A worker dying between the steps loses nothing that reached Redis: the pending hash
survives it, and the next flush writes it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from celery import Task

from cache import CacheError, RedisSchedulerCache, as_utc, utc_now
from tasks.celery import app
from tasks.runtime import get_cache, get_source, settings
from tasks.source.protocol import Source
from tasks.worker.retry import RetryingTask

logger = logging.getLogger(__name__)

# The database flush is a singleton: two beats, or a slow flush overlapping the next
# tick, would only write the same rows twice, but there is no reason to let them.
FLUSH_LOCK = "last-used-flush"


class InvalidLastUsed(ValueError):
    """A last-use update that names no account or no time; never worth a retry."""


def flush_pending(cache: RedisSchedulerCache, source: Source) -> dict[str, int]:
    """Write the cache's pending last-use times to the database and acknowledge them."""
    pending = cache.pending_last_used()
    if not pending:
        return {"pending": 0, "written": 0, "acked": 0}
    written = source.update_last_used(pending)
    # Ack exactly what was read: a touch that arrived meanwhile is newer and stays.
    acked = cache.ack_pending_last_used(pending)
    cache.record_stats(
        {"last_used_db_flushes": 1, "last_used_db_rows": len(pending)},
        {"last_used_db_flush_at": utc_now().isoformat()},
    )
    logger.info(
        "last-used flush: %d pending, %d rows moved, %d acked", len(pending), written, acked
    )
    return {"pending": len(pending), "written": int(written), "acked": acked}


@app.task(  # type: ignore[untyped-decorator]
    name="tasks.flush_last_used",
    bind=True,
    # Retried on an outage; the data is safe in Redis's pending hash meanwhile.
    base=RetryingTask,
)
def flush_last_used(self: Task) -> dict[str, Any]:
    """Beat: pending last-use times from Redis to the database, one batch, at least once."""
    cache = get_cache()
    token = cache.try_lock(FLUSH_LOCK, settings().lock_ttl_seconds, token=self.request.id)
    if token is None:
        logger.info("last-used flush skipped: another flush holds the lock")
        return {"status": "busy"}
    try:
        return {"status": "done", **flush_pending(cache, get_source())}
    finally:
        _unlock(cache, FLUSH_LOCK, token)


def _unlock(cache: RedisSchedulerCache, name: str, token: str) -> None:
    try:
        cache.unlock(name, token)
    except CacheError as exc:
        # The lock's TTL ends it anyway; do not hide the error the body may be raising.
        logger.warning("could not release lock %s: %s", name, exc)


def parse_updates(updates: object) -> dict[int, datetime]:
    """``{account_id: ISO time or unix seconds}`` as datetimes; raise naming the bad value."""
    if not isinstance(updates, Mapping):
        raise InvalidLastUsed(f"updates must be a mapping of account id to time, got {updates!r}")
    parsed: dict[int, datetime] = {}
    for raw_id, raw_time in updates.items():
        account_id = _account_id(raw_id)
        at = _time(account_id, raw_time)
        if account_id not in parsed or at > parsed[account_id]:
            parsed[account_id] = at
    return parsed


def _account_id(raw: object) -> int:
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        value = int(raw)
    elif isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        raise InvalidLastUsed(f"invalid account id {raw!r}: expected a positive integer")
    if value <= 0:
        raise InvalidLastUsed(f"invalid account id {raw!r}: expected a positive integer")
    return value


def _time(account_id: int, raw: object) -> datetime:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not math.isfinite(raw) or raw < 0:
            raise InvalidLastUsed(f"invalid last use {raw!r} for account {account_id}")
        try:
            return datetime.fromtimestamp(raw, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidLastUsed(
                f"invalid last use {raw!r} for account {account_id}: out of range"
            ) from None
    if isinstance(raw, str):
        try:
            return as_utc(datetime.fromisoformat(raw))
        except ValueError:
            raise InvalidLastUsed(
                f"invalid last use {raw!r} for account {account_id}: expected ISO 8601 "
                "or unix seconds"
            ) from None
    raise InvalidLastUsed(
        f"invalid last use {raw!r} for account {account_id}: expected ISO 8601 or unix seconds"
    )


@app.task(  # type: ignore[untyped-decorator]
    name="tasks.update_last_used",
    # Retried on an outage; the times are still in the message meanwhile.
    base=RetryingTask,
    throws=(InvalidLastUsed,),
)
def update_last_used(updates: dict[str, str | float]) -> dict[str, int]:
    """Apply ``{account_id: time}`` to the cache and the database, monotonic on both.

    The cache records the times as pending first, so a database failure after that only
    delays them to the next flush.
    """
    parsed = parse_updates(updates)
    if not parsed:
        return {"accounts": 0, "cache_moved": 0, "db_moved": 0}
    cache = get_cache()
    moved = cache.update_last_used(parsed, record_pending=True)
    written = get_source().update_last_used(parsed)
    cache.ack_pending_last_used(parsed)
    return {"accounts": len(parsed), "cache_moved": moved, "db_moved": int(written)}
