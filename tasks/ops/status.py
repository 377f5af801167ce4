"""The facts an operator looks at: one report for ``sched status``, the live view and the
metrics, read from Redis and the source database alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from cache import RedisSchedulerCache, SchedulerBucket
from tasks import stats
from tasks.buckets import in_order, warm_buckets
from tasks.connections import mask_url
from tasks.settings import Settings
from tasks.source.protocol import OutboxStats


class OutboxSource(Protocol):
    def max_outbox_id(self) -> int: ...


@runtime_checkable
class KnowsOutboxTable(Protocol):
    """A source that can say how large its outbox table is (the SQL source)."""

    def outbox_stats(self) -> OutboxStats: ...


class StatusSource(OutboxSource, Protocol):
    """What the report reads from the source: the newest outbox id and the groups (for
    the buckets kept warm). :class:`~tasks.source.SqlSource` is one."""

    def active_groups(self) -> Any: ...


class BucketStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    bucket: str
    active_version: int | None
    reserved_version: int
    account_count: int
    schedulable_now: int | None
    built_at: datetime | None
    age_seconds: float | None
    rebuild_ms: float | None


class OutboxStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    watermark: int
    newest_id: int | None
    lag: int | None
    gaps: int
    oldest_gap_seconds: float | None
    events_applied: int | None
    last_poll_at: datetime | None
    # The table itself: rows kept (applied ones go after SCHED_OUTBOX_RETENTION_SECONDS).
    rows: int | None = None
    oldest_row_age_seconds: float | None = None


class LastUsedStatus(BaseModel):
    model_config = ConfigDict(frozen=True)

    pending_db_writes: int
    db_flushes: int | None
    db_rows_written: int | None
    last_db_flush_at: datetime | None


class StatusReport(BaseModel):
    """Everything ``sched status --json`` prints; field names are a stable interface."""

    model_config = ConfigDict(frozen=True)

    generated_at: datetime
    redis_url: str
    database_url: str | None = None
    buckets: list[BucketStatus]
    outbox: OutboxStatus
    last_used: LastUsedStatus
    rebuilds: int | None
    # The stats hash, typed: counters and ids as integers, durations as numbers, every
    # ``*_at`` as an ISO 8601 UTC time (the hash keeps some as unix seconds).
    stats: dict[str, int | float | datetime | str]


StatValue = int | float | datetime | str


def typed_stats(raw: Mapping[str, str]) -> dict[str, StatValue]:
    """The stats hash with each value in its type; a value that does not parse stays the
    string it is, so one bad entry never hides the others."""
    return {name: _typed(name, value) for name, value in sorted(raw.items())}


def _typed(name: str, value: str) -> StatValue:
    if name.endswith("_at"):
        return _time(value) or value
    if name in stats.COUNTERS:
        try:
            return int(float(value))
        except (ValueError, OverflowError):
            return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _time(value: str | None) -> datetime | None:
    """A time the tasks wrote, as unix seconds or ISO 8601, in UTC; None if neither."""
    if not value:
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _int(stats: Mapping[str, str], name: str) -> int | None:
    """A counter the tasks record (named in tasks/stats.py);
    None until the first time it is recorded."""
    raw = stats.get(name)
    try:
        return None if raw is None else int(float(raw))
    except ValueError:
        return None


def system_status(
    cache: RedisSchedulerCache,
    source: StatusSource,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> StatusReport:
    """The report of ``sched status``, the live view and ``sched metrics``: the cache's
    figures, the newest outbox id from the database, and every bucket kept warm."""
    return collect_status(
        cache,
        redis_url=settings.redis_url,
        database_url=settings.database_url,
        source=source,
        also_buckets=warm_buckets(
            ((group.id, group.platform) for group in source.active_groups()), settings
        ),
        now=now,
    )


def collect_status(
    cache: RedisSchedulerCache,
    *,
    redis_url: str,
    database_url: str | None = None,
    source: OutboxSource | None = None,
    also_buckets: Iterable[SchedulerBucket] = (),
    now: datetime | None = None,
) -> StatusReport:
    """Read the report from Redis (and the newest outbox id from ``source`` if given).

    ``also_buckets`` are listed even before their first snapshot (the default buckets),
    so an operator sees what is still missing.
    """
    now = now or datetime.now(UTC)
    rows = [_bucket_status(cache, b, now) for b in in_order([*cache.list_buckets(), *also_buckets])]
    figures = cache.stats()
    watermark = cache.get_outbox_watermark()
    gaps = cache.outbox_gaps()
    newest = source.max_outbox_id() if source is not None else None
    lag = max(0, newest - watermark) if newest is not None else _int(figures, stats.OUTBOX_LAG)
    table = source.outbox_stats() if isinstance(source, KnowsOutboxTable) else None
    oldest_row = table.oldest_at if table is not None else None
    outbox = OutboxStatus(
        watermark=watermark,
        newest_id=newest,
        lag=lag,
        gaps=len(gaps),
        oldest_gap_seconds=(now - min(gaps.values())).total_seconds() if gaps else None,
        events_applied=_int(figures, stats.OUTBOX_EVENTS_APPLIED),
        last_poll_at=_time(figures.get(stats.OUTBOX_LAST_POLL_AT)),
        rows=table.rows if table is not None else None,
        oldest_row_age_seconds=(now - oldest_row).total_seconds() if oldest_row else None,
    )
    last_used = LastUsedStatus(
        pending_db_writes=len(cache.pending_last_used()),
        db_flushes=_int(figures, stats.LAST_USED_DB_FLUSHES),
        db_rows_written=_int(figures, stats.LAST_USED_DB_ROWS),
        last_db_flush_at=_time(figures.get(stats.LAST_USED_DB_FLUSH_AT)),
    )
    return StatusReport(
        generated_at=now,
        redis_url=mask_url(redis_url),
        database_url=mask_url(database_url) if database_url else None,
        buckets=rows,
        outbox=outbox,
        last_used=last_used,
        rebuilds=_int(figures, stats.REBUILDS),
        stats=typed_stats(figures),
    )


def _bucket_status(
    cache: RedisSchedulerCache, bucket: SchedulerBucket, now: datetime
) -> BucketStatus:
    info = cache.bucket_info(bucket)
    schedulable: int | None = None
    if info.active_version is not None:
        accounts = cache.get_snapshot(bucket)
        if accounts is not None:
            schedulable = sum(1 for account in accounts if account.is_schedulable(now))
    return BucketStatus(
        bucket=str(bucket),
        active_version=info.active_version,
        reserved_version=info.reserved_version,
        account_count=info.account_count,
        schedulable_now=schedulable,
        built_at=info.built_at,
        age_seconds=(now - info.built_at).total_seconds() if info.built_at else None,
        rebuild_ms=info.rebuild_ms,
    )
