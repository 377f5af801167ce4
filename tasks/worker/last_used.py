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

from cache import (
    CacheError,
    CorruptKey,
    RedisSchedulerCache,
    as_utc,
    brief,
    check_account_id,
    utc_now,
)
from tasks import stats
from tasks.celery import app
from tasks.requests import repair_wrong_types
from tasks.runtime import get_cache, get_source, settings
from tasks.settings import Settings
from tasks.source.protocol import Source
from tasks.worker.retry import RetryingTask, is_transient

logger = logging.getLogger(__name__)

# The database flush is a singleton: two beats, or a slow flush overlapping the next
# tick, would only write the same rows twice, but there is no reason to let them.
FLUSH_LOCK = "last-used-flush"
# Bad pairs named one by one in the log per message; the rest only counted, so a
# message of a million bad ids costs one line more, not a million.
MAX_LOGGED_DROPS = 20


class InvalidLastUsed(ValueError):
    """A last-use update that names no account or no time; never worth a retry."""


def flush_pending(cache: RedisSchedulerCache, source: Source) -> dict[str, int]:
    """Write the cache's pending last-use times to the database and acknowledge them.

    An entry the database refuses is logged, dropped and counted; the others are
    written. (Malformed entries never get this far: the cache drops them as it reads.)
    """
    pending = cache.pending_last_used()
    if not pending:
        return {"pending": 0, "written": 0, "acked": 0}
    try:
        written = source.update_last_used(pending)
    except Exception as exc:
        if is_transient(exc):
            raise
        logger.warning("last-used batch of %d refused (%s); writing one by one", len(pending), exc)
        written = _write_one_by_one(cache, source, pending)
    # Ack exactly what was read: a touch that arrived meanwhile is newer and stays.
    acked = cache.ack_pending_last_used(pending)
    cache.record_stats(
        {stats.LAST_USED_DB_FLUSHES: 1, stats.LAST_USED_DB_ROWS: len(pending)},
        {stats.LAST_USED_DB_FLUSH_AT: utc_now().isoformat()},
    )
    logger.info(
        "last-used flush: %d pending, %d rows moved, %d acked", len(pending), written, acked
    )
    return {"pending": len(pending), "written": int(written), "acked": acked}


def _write_one_by_one(
    cache: RedisSchedulerCache, source: Source, pending: Mapping[int, datetime]
) -> int:
    written = dropped = 0
    for account_id, at in pending.items():
        try:
            written += source.update_last_used({account_id: at})
        except Exception as exc:
            if is_transient(exc):
                raise
            dropped += 1
            # Acknowledged with the rest: kept, it would fail every flush after this one.
            logger.error("dropping last use of account %s: the database refuses it: %s",
                         account_id, brief(str(exc)))  # fmt: skip
    cache.record_stats({stats.LAST_USED_DROPPED: dropped})
    return written


def flush_lock_ttl(config: Settings) -> float:
    """How long the flush's lock lives: until the next tick, within the lock TTL.

    A flush is one batch write, so a flush still running at the next tick is stuck or
    dead; and a second flush only writes the same rows again (times only move
    forward). A killed flush therefore holds the job back one tick at most, not the
    whole lock TTL.
    """
    return max(1.0, min(float(config.lock_ttl_seconds), config.last_used_db_flush_seconds))


@app.task(  # type: ignore[untyped-decorator]
    name="tasks.flush_last_used",
    bind=True,
    # Retried on an outage; the data is safe in Redis's pending hash meanwhile.
    base=RetryingTask,
)
def flush_last_used(self: Task) -> dict[str, Any]:
    """Beat: pending last-use times from Redis to the database, one batch, at least once."""
    cache = get_cache()
    token = cache.try_lock(FLUSH_LOCK, flush_lock_ttl(settings()), token=self.request.id)
    if token is None:
        logger.info("last-used flush skipped: another flush holds the lock")
        return {"status": "busy"}
    try:
        try:
            return {"status": "done", **flush_pending(cache, get_source())}
        except CorruptKey as exc:
            repair_wrong_types(cache, exc)
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
    """``{account_id: ISO time or unix seconds}`` as datetimes.

    A pair that names no account or no time is logged (WARNING, the value cut short)
    and dropped on its own: the message is all a worker gets, and one bad id beside a
    thousand good ones must not cost the good ones their last use. A message that is
    not a mapping, or holds no good pair at all, raises naming (the first) bad value,
    so that the task fails where Flower shows it.
    """
    if not isinstance(updates, Mapping):
        raise InvalidLastUsed(
            f"updates must be a mapping of account id to time, got {brief(updates)}"
        )
    parsed: dict[int, datetime] = {}
    dropped = 0
    first_error: InvalidLastUsed | None = None
    for raw_id, raw_time in updates.items():
        try:
            account_id = _account_id(raw_id)
            at = _time(account_id, raw_time)
        except InvalidLastUsed as exc:
            first_error = first_error or exc
            dropped += 1
            if dropped <= MAX_LOGGED_DROPS:
                logger.warning("dropping a last-use update: %s", exc)
            continue
        if account_id not in parsed or at > parsed[account_id]:
            parsed[account_id] = at
    if dropped > MAX_LOGGED_DROPS:
        logger.warning(
            "dropped %d malformed last-use updates in all (%d logged), kept %d",
            dropped,
            MAX_LOGGED_DROPS,
            len(parsed),
        )
    if first_error is not None and not parsed:
        raise first_error
    return parsed


def _account_id(raw: object) -> int:
    try:
        return check_account_id(raw)
    except ValueError as exc:
        raise InvalidLastUsed(str(exc)) from None


def _time(account_id: int, raw: object) -> datetime:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        if not math.isfinite(raw) or raw < 0:
            raise InvalidLastUsed(f"invalid last use {brief(raw)} for account {account_id}")
        try:
            return datetime.fromtimestamp(raw, UTC)
        except (OverflowError, OSError, ValueError):
            raise InvalidLastUsed(
                f"invalid last use {brief(raw)} for account {account_id}: out of range"
            ) from None
    if isinstance(raw, str):
        try:
            return as_utc(datetime.fromisoformat(raw))
        except ValueError:
            raise InvalidLastUsed(
                f"invalid last use {brief(raw)} for account {account_id}: expected ISO 8601 "
                "or unix seconds"
            ) from None
    raise InvalidLastUsed(
        f"invalid last use {brief(raw)} for account {account_id}: expected ISO 8601 or unix seconds"
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
    try:
        parsed = parse_updates(updates)
    except InvalidLastUsed as exc:
        # Celery logs an expected error at INFO: this one loses data, say so louder.
        logger.warning("last-use message refused: %s", exc)
        raise
    if not parsed:
        return {"accounts": 0, "cache_moved": 0, "db_moved": 0}
    cache = get_cache()
    try:
        moved = cache.update_last_used(parsed, record_pending=True)
    except CorruptKey as exc:
        repair_wrong_types(cache, exc)
        moved = cache.update_last_used(parsed, record_pending=True)
    written = get_source().update_last_used(parsed)
    cache.ack_pending_last_used(parsed)
    return {"accounts": len(parsed), "cache_moved": moved, "db_moved": int(written)}
