"""Following the source database's outbox: changes in; one account's change applied in
place (tasks/worker/in_place.py), the rest as rebuild requests out.

A watermark poller alone skips events: outbox ids are taken when a transaction inserts
its event, but become visible when it commits, and commits come in any order::

    tx A: insert event 41 ................................. commit
    tx B:      insert event 42 .. commit
    poller:                              read > 40: sees 42, watermark := 42
    poller:                                                        read > 42: 41 lost

So every id between the old watermark and the highest id read that was not seen is
kept as a gap (in Redis, next to the watermark, moved in the same script call) and
looked up again by id on every poll. A gap that turns up is applied; one that stays
missing longer than ``outbox_gap_timeout_seconds`` was a rolled-back transaction (a
sequence never gives an id back) and is given up, with a log line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

from celery import Task

from cache import (
    CacheError,
    Clock,
    CorruptKey,
    RedisSchedulerCache,
    SchedulerBucket,
    utc_now,
)
from tasks import buckets, stats
from tasks.celery import app
from tasks.requests import request_rebuild
from tasks.runtime import default_buckets, get_cache, get_source, settings
from tasks.settings import Settings
from tasks.source.protocol import OutboxEvent, Source
from tasks.worker.in_place import InPlace
from tasks.worker.leases import reclaim_lost_rebuilds
from tasks.worker.outbox_plan import BatchPlan, missing_ids, plan_batch
from tasks.worker.rebuild import refresh_buckets
from tasks.worker.retry import LockLost, RetryingTask, is_transient

logger = logging.getLogger(__name__)

# One poller at a time: two beats, or a slow poll overlapping the next tick, would
# otherwise apply the same batch twice at once.
POLL_LOCK = "outbox-poller"
# See poll_lock_ttl.
POLL_LOCK_TTL_SECONDS = 2.0
# Gap ids are looked up in chunks, so a hole of thousands of ids (a sequence jump)
# stays within every database's limit on bound parameters.
GAP_LOOKUP_CHUNK = 500


@runtime_checkable
class KnowsOutboxEnd(Protocol):
    def max_outbox_id(self) -> int: ...


@dataclass
class PollReport:
    """What one poll did; returned by the task, so Flower shows it."""

    batches: int = 0
    applied: int = 0
    malformed: int = 0
    failed: int = 0
    gaps_recorded: int = 0
    gaps_resolved: int = 0
    gaps_given_up: int = 0
    rebuilds_requested: int = 0
    # Accounts inserted into or moved within a bucket's active version, no rebuild.
    placed: int = 0
    watermark: int = 0

    def add(self, other: PollReport) -> None:
        for name in (f.name for f in fields(self) if f.name != "watermark"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.watermark = max(self.watermark, other.watermark)


class OutboxPoller:
    """Applies outbox events to the cache in id order, one batch per :meth:`poll_batch`.

    A batch is applied as a whole before the watermark moves: a transient failure
    (Redis or the database unavailable) raises with nothing advanced, and the retry
    applies the same events again, which is safe because applying is idempotent
    (payloads and placements are revision-guarded, a placement again puts the account
    where it is, rebuild requests coalesce, last use is monotonic).
    """

    def __init__(
        self,
        cache: RedisSchedulerCache,
        source: Source,
        *,
        config: Settings,
        request_rebuild: Callable[[SchedulerBucket], bool],
        refresh_all: Callable[[], object],
        clock: Clock = utc_now,
    ) -> None:
        self.cache = cache
        self.source = source
        self.config = config
        self.request_rebuild = request_rebuild
        self.refresh_all = refresh_all
        self.clock = clock
        self._warm: set[SchedulerBucket] | None = None
        # Whether the last batch was full, so more events may be waiting right behind it.
        self.more = False

    # -- lost state ------------------------------------------------------------------
    def recover_lost_state(self, corrupt: CorruptKey | None = None) -> bool:
        """Re-establish the outbox position if Redis lost its state (no epoch), or holds
        garbage for it (``corrupt``); True when this call did, and sent every bucket
        a rebuild.

        A full read supersedes the replay: the watermark goes to the source's highest
        outbox id, read before the rebuilds are sent, so they see every event up to it.
        Ids just below it that are not visible yet (transactions in flight) are gaps,
        looked up on the next polls as usual. When several workers notice at once, the
        epoch's compare-and-set lets exactly one re-establish.
        """
        seen = self.cache.epoch()
        if seen is not None and corrupt is None:
            return False
        top = self.source.max_outbox_id() if isinstance(self.source, KnowsOutboxEnd) else 0
        low = max(0, top - self.config.outbox_batch_size)
        visible = {e.id for e in self.source.outbox_after(low, self.config.outbox_batch_size)}
        gaps = [i for i in range(low + 1, top) if i not in visible]
        if not self.cache.reestablish(seen, top, gaps):
            return False
        logger.warning(
            "cache state %s: outbox position set to the source's id %d (%d ids in flight "
            "kept as gaps); every bucket is being rebuilt from the source",
            "lost (no epoch in Redis)" if corrupt is None else f"unreadable ({corrupt})",
            top,
            len(gaps),
        )
        self.refresh_all()
        self.cache.record_stats(
            {stats.STATE_REESTABLISHED: 1}, {stats.LAST_REESTABLISHED_AT: f"{time.time():.6f}"}
        )
        return True

    # -- one batch -------------------------------------------------------------------
    def poll_batch(self) -> PollReport:
        """Apply the gaps that turned up and the next batch; advance past both."""
        timeout = self.config.outbox_gap_timeout_seconds
        now = self.clock()
        watermark = self.cache.get_outbox_watermark()
        gaps = self.cache.outbox_gaps()
        found = self._lookup_gaps(sorted(gaps)) if gaps else []
        found_ids = {event.id for event in found}
        given_up = sorted(
            gap
            for gap, first_missed in gaps.items()
            if gap not in found_ids and (now - first_missed).total_seconds() > timeout
        )
        events = self.source.outbox_after(watermark, self.config.outbox_batch_size)
        seen = {event.id for event in events}
        top = max(seen, default=watermark)
        new_gaps = missing_ids(watermark, top, seen)

        report = self._apply(sorted([*found, *events], key=lambda e: e.id))
        if top > watermark or found_ids or given_up:
            self.cache.advance_outbox(top, new_gaps=new_gaps, resolved_gaps=[*found_ids, *given_up])
        for gap in given_up:
            logger.warning(
                "outbox event %d never became visible within %ss (rolled back?); given up",
                gap,
                timeout,
            )
        report.batches = 1
        report.gaps_recorded = len(new_gaps)
        report.gaps_resolved = len(found_ids)
        report.gaps_given_up = len(given_up)
        report.watermark = max(top, watermark)
        self.more = len(events) >= self.config.outbox_batch_size
        return report

    def poll(self, budget_seconds: float, renew: Callable[[], None] | None = None) -> PollReport:
        """Apply batches until caught up or ``budget_seconds`` ran out; record stats."""
        deadline = time.monotonic() + budget_seconds
        total = PollReport(watermark=0)
        self._warm = None
        try:
            while True:
                total.add(self.poll_batch())
                if not self.more or time.monotonic() >= deadline:
                    break
                if renew is not None:
                    renew()
        except Exception:
            if total.batches:
                # The batches before the failure were applied: count them if possible.
                with suppress(Exception):
                    self._record(total)
            raise
        self._record(total)
        return total

    def _lookup_gaps(self, gap_ids: Sequence[int]) -> list[OutboxEvent]:
        found: list[OutboxEvent] = []
        for start in range(0, len(gap_ids), GAP_LOOKUP_CHUNK):
            found += self.source.outbox_by_ids(gap_ids[start : start + GAP_LOOKUP_CHUNK])
        return found

    def _record(self, report: PollReport) -> None:
        values = {
            stats.OUTBOX_WATERMARK: str(report.watermark),
            stats.OUTBOX_LAST_POLL_AT: self.clock().isoformat(),
        }
        if isinstance(self.source, KnowsOutboxEnd):
            values["outbox_lag"] = str(max(0, self.source.max_outbox_id() - report.watermark))
        self.cache.record_stats(
            {
                stats.OUTBOX_POLLS: 1,
                stats.OUTBOX_BATCHES: report.batches,
                stats.OUTBOX_EVENTS_APPLIED: report.applied,
                stats.OUTBOX_EVENTS_MALFORMED: report.malformed,
                stats.OUTBOX_EVENTS_FAILED: report.failed,
                stats.OUTBOX_GAPS_RECORDED: report.gaps_recorded,
                stats.OUTBOX_GAPS_RESOLVED: report.gaps_resolved,
                stats.OUTBOX_GAPS_GIVEN_UP: report.gaps_given_up,
                stats.OUTBOX_REBUILDS_REQUESTED: report.rebuilds_requested,
                stats.OUTBOX_ACCOUNTS_PLACED: report.placed,
            },
            values,
        )

    # -- applying --------------------------------------------------------------------
    def _apply(self, events: Sequence[OutboxEvent]) -> PollReport:
        """Apply ``events`` as one plan; if that fails for a reason that is not
        transient, apply them one by one so that only the event at fault is skipped."""
        report = PollReport()
        if not events:
            return report
        plan = plan_batch(events)
        report.malformed = len(plan.malformed)
        try:
            report.rebuilds_requested, report.placed = self._apply_plan(plan)
        except Exception as exc:
            if is_transient(exc):
                raise
            logger.warning(
                "outbox batch %d..%d failed (%s); applying its events one by one",
                events[0].id,
                events[-1].id,
                exc,
            )
            return self._apply_one_by_one(events)
        report.applied = len(plan.event_ids)
        return report

    def _apply_one_by_one(self, events: Sequence[OutboxEvent]) -> PollReport:
        report = PollReport()
        first_error: Exception | None = None
        for event in events:
            plan = plan_batch([event])
            if plan.malformed:
                report.malformed += 1
                continue
            try:
                requested, placed = self._apply_plan(plan)
            except Exception as exc:
                if is_transient(exc):
                    raise
                first_error = first_error or exc
                report.failed += 1
                logger.exception(
                    "skipping outbox event %d (%s): it cannot be applied",
                    event.id,
                    event.event_type,
                )
            else:
                report.applied += 1
                report.rebuilds_requested += requested
                report.placed += placed
        if first_error is not None and report.applied == 0 and len(events) > 1:
            # Every event failing points at the system (a schema, a bug), not at the
            # events: skipping them all would lose them. Keep them and retry.
            raise first_error
        return report

    def _apply_plan(self, plan: BatchPlan) -> tuple[int, int]:
        """Carry out ``plan``; returns how many rebuild requests it made, and how many
        accounts it put in place instead (tasks/worker/in_place.py)."""
        if plan.empty:
            return 0, 0
        wanted: set[SchedulerBucket] = set()
        placed = 0
        if plan.accounts:
            applied = InPlace(self.cache, self.source, self.config, self.clock).apply(
                plan.accounts, bulk=plan.bulk, regrouped=plan.regrouped, warm=self._warm_buckets()
            )
            wanted |= applied.rebuild
            placed = applied.placed
        if plan.last_used:
            # These times came from the database: nothing to write back (not pending).
            self.cache.update_last_used(plan.last_used)
        if plan.groups:
            wanted |= {b for b in self._warm_buckets() if b.group_id in plan.groups}
        if plan.full_rebuild:
            self.refresh_all()
        # Only buckets that are served (registered) or kept warm (defaults): a bucket
        # nobody reads is built on its first read, by the reader's fallback.
        wanted &= self._warm_buckets()
        for bucket in buckets.in_order(wanted):
            self.request_rebuild(bucket)
        return len(wanted), placed

    def _warm_buckets(self) -> set[SchedulerBucket]:
        if self._warm is None:
            self._warm = set(self.cache.list_buckets()) | set(default_buckets(self.source))
        return self._warm


# -- the task ---------------------------------------------------------------------------
# Every beat tick is a fresh attempt already; a few retries bridge a short outage
# without piling up one retry chain per tick during a long one.
POLL_MAX_RETRIES = 3


@app.task(  # type: ignore[untyped-decorator]
    name="tasks.poll_outbox",
    bind=True,
    base=RetryingTask,
    max_retries=POLL_MAX_RETRIES,
    failure_note="outbox poll failed, nothing advanced",
)
def poll_outbox(self: Task) -> dict[str, Any]:
    """Beat, every ``outbox_interval_seconds``: apply new outbox events; one poll runs
    at a time (the others return ``busy`` at once). A failure advances nothing."""
    config = settings()
    cache = get_cache()
    ttl = poll_lock_ttl(config)
    token = cache.try_lock(POLL_LOCK, ttl, token=self.request.id)
    if token is None:
        logger.debug("outbox poll skipped: another poll holds the lock")
        return {"status": "busy"}
    try:
        poller = OutboxPoller(
            cache,
            get_source(),
            config=config,
            request_rebuild=request_rebuild,
            # Forced: the refresh's own lock would skip it within its interval.
            refresh_all=lambda: refresh_buckets.apply_async(kwargs={"force": True}),
        )
        renew = lambda: _renew(cache, token, ttl)  # noqa: E731
        try:
            poller.recover_lost_state()
            report = poller.poll(_budget(config), renew=renew)
        except CorruptKey as exc:
            if exc.key not in (cache.keys.outbox_watermark, cache.keys.outbox_gaps):
                raise
            # Nobody would fix it by hand in time: garbage is as good as lost.
            logger.error("%s; re-establishing the outbox position from the source", exc)
            poller.recover_lost_state(corrupt=exc)
            report = poller.poll(_budget(config), renew=renew)
        resent = _reclaim(cache)
    finally:
        _unlock(cache, token)
    return {"status": "done", **vars(report), "rebuilds_resent": resent}


def _reclaim(cache: RedisSchedulerCache) -> int:
    # Here because the poll runs every second; after the outbox, whose position has
    # moved already: a failure here must not apply the same events again.
    try:
        return reclaim_lost_rebuilds(cache)
    except Exception as exc:  # the broker's errors too: none may fail the poll
        logger.warning("could not re-send lost rebuilds, the next poll tries again: %s", exc)
        return 0


def _budget(config: Settings) -> float:
    # Stop early enough to release the lock well within its TTL and the time limit.
    return max(1.0, min(config.lock_ttl_seconds, config.rebuild_time_limit_seconds) / 3)


def poll_lock_ttl(config: Settings) -> float:
    """The poll lock's lifetime: a couple of seconds, renewed after every batch.

    Not the poll's budget, let alone the whole lock TTL: a killed poller stops the
    outbox for as long as its lock lives, and every change meanwhile waits. A batch that
    outlives it lets a second poller apply the same events again, which is safe
    (applying is idempotent); the first one stops at its next renewal.
    """
    return min(POLL_LOCK_TTL_SECONDS, max(1.0, _budget(config)))


def _renew(cache: RedisSchedulerCache, token: str, ttl: float) -> None:
    if cache.try_lock(POLL_LOCK, ttl, token=token) is None:
        raise LockLost(f"outbox poller lock {POLL_LOCK!r} was lost (token {token})")


def _unlock(cache: RedisSchedulerCache, token: str) -> None:
    try:
        cache.unlock(POLL_LOCK, token)
    except CacheError as exc:
        # Its TTL ends the lock anyway; do not hide the error the poll may be raising.
        logger.warning("could not release lock %s: %s", POLL_LOCK, exc)
