"""Rebuilding bucket snapshots: the Celery tasks behind :func:`tasks.requests.request_rebuild`.

One burst of requests for a bucket, and the rebuilds it costs::

    request_rebuild(b) x 1000   the first enqueues a task at once, the rest only count
    rebuild_bucket(b)           lock -> begin (covers every request so far) -> reserve a
                                version -> read the source -> write -> finish -> unlock
    request during that run     enqueues exactly one more task: its change may have
                                landed after the read, so it is never lost
    that task                   waits for the lock (short retries, as long as the lock
                                is held: a dead holder's lock expires within a lease)
                                and until rebuild_min_interval_seconds after the last
                                write, gathering every request meanwhile, then rebuilds

Every figure it keeps is named in :mod:`tasks.stats`.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from celery.exceptions import Retry

from cache import (
    Account,
    CacheError,
    CorruptKey,
    RedisSchedulerCache,
    SchedulerBucket,
    brief,
)
from tasks import buckets, runtime, stats
from tasks.celery import app
from tasks.requests import request_rebuild, send_rebuild
from tasks.worker.bucket_lock import LOCK_LEASE_SECONDS, lock_keeper
from tasks.worker.retry import RetryingTask, is_transient

logger = logging.getLogger(__name__)

# A busy lock is another rebuild of the same bucket, which takes milliseconds: retry
# soon, doubling from this up to the cap, with jitter so waiters do not march in step.
BUSY_RETRY_FIRST_SECONDS = 0.05
BUSY_RETRY_MAX_SECONDS = 2.0
# The refresh holds its named lock (never releasing it) for this share of its
# interval: ticks of several beats that fall closer together than that run once.
REFRESH_LOCK = "refresh-buckets"
REFRESH_LOCK_SHARE = 0.9
# A bucket whose rebuild was requested but which has not been written for this many
# refresh intervals has lost its queued task (it gave up, or the broker lost it).
STALE_AFTER_INTERVALS = 2


def _bucket_arg(args: Any, kwargs: Any) -> str:
    """The task's bucket argument for a log line: as it is when it can be a bucket,
    else briefly (an argument of megabytes must not become a line of megabytes)."""
    raw = args[0] if args else (kwargs or {}).get("bucket")
    return raw if isinstance(raw, str) and len(raw) <= 100 else brief(raw)


class _RebuildTask(RetryingTask):
    """Says loudly when a rebuild is given up, and lets the bucket be requested again."""

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        raw = _bucket_arg(args, kwargs)
        if is_transient(exc):
            logger.error(
                "rebuild of bucket %s given up after %d retries: %s; the next request or "
                "refresh of the bucket rebuilds it",
                raw,
                self.request.retries,
                exc,
            )
        else:
            logger.error("rebuild task %s for bucket %s failed: %s", task_id, raw, exc)
        with suppress(CacheError, ValueError):
            cache = runtime.get_cache()
            cache.record_stats({stats.REBUILDS_FAILED: 1})
            # No task is queued for the bucket any more: let the next request send one.
            cache.abandon_rebuild_request(SchedulerBucket.parse(raw))


@app.task(name="tasks.rebuild_bucket", bind=True, base=_RebuildTask)  # type: ignore[untyped-decorator]
def rebuild_bucket(self: Task, bucket: str) -> str:
    """Rebuild one bucket's snapshot from the source, if a request is not covered yet."""
    parsed = SchedulerBucket.parse(bucket)
    # A platform nobody configured fails at once (a ValueError: no retry) and
    # registers nothing.
    buckets.check_platform(parsed.platform, runtime.settings())
    cache = runtime.get_cache()
    # Every key its readers need is checked first: a key of the wrong type fails every
    # read of the bucket, and a rebuild may not write to it (the last-use store, say).
    # Two short scripts, one per slot; nothing next to reading the source.
    _repair(cache, parsed, "found before rebuilding")
    try:
        return _rebuild(self, cache, parsed)
    except CorruptKey as exc:
        # One appeared meanwhile: delete it (its content is nothing this package
        # wrote) and write again, once.
        if not _repair(cache, parsed, str(exc)):
            raise
        return _rebuild(self, cache, parsed)


def _repair(cache: RedisSchedulerCache, bucket: SchedulerBucket, why: str) -> bool:
    """Delete the keys of ``bucket`` and the shared stores that hold the wrong type,
    naming each; True when there were any."""
    repaired = cache.wrong_type_keys(bucket, repair=True)
    if repaired:
        logger.error(
            "bucket %s: %s; deleted the keys of the wrong type %s",
            bucket,
            why,
            ", ".join(f"{key} (a {held})" for key, held in repaired.items()),
        )
        cache.record_stats({stats.KEYS_REPAIRED: len(repaired)})
    return bool(repaired)


def _rebuild(self: Task, cache: RedisSchedulerCache, parsed: SchedulerBucket) -> str:
    # The task id as token: a redelivered task whose first run was killed takes its
    # own lock back at once instead of waiting for the lease. The lock lives one lease
    # and is renewed while this run lives (tasks/worker/bucket_lock.py).
    token = cache.try_lock_bucket(parsed, LOCK_LEASE_SECONDS, token=self.request.id)
    if token is None:
        cache.record_stats({stats.REBUILDS_LOCK_BUSY: 1})
        delay = min(BUSY_RETRY_FIRST_SECONDS * 2**self.request.retries, BUSY_RETRY_MAX_SECONDS)
        # Never counted as done: the lock holder may have read the source before the
        # change that caused this request. A dead holder's lease bounds the wait.
        raise _wait(self, cache, parsed, delay * random.uniform(0.5, 1.0))
    try:
        longest = runtime.settings().lock_ttl_seconds
        with lock_keeper().held(cache, parsed, token, longest=longest):
            wait = _too_soon(cache, parsed)
            if wait > 0:
                # Not begun: the queued flag stays set, so requests meanwhile join this run.
                cache.record_stats({stats.REBUILDS_DEFERRED: 1})
                raise _wait(self, cache, parsed, wait)
            return _rebuild_locked(cache, parsed)
    finally:
        try:
            cache.unlock_bucket(parsed, token)
        except CacheError as exc:
            logger.warning("bucket %s: unlock failed, the lock expires by itself: %s", parsed, exc)


def _wait(
    task: Task, cache: RedisSchedulerCache, bucket: SchedulerBucket, countdown: float
) -> Retry:
    """A retry for a wait that is not a failure, so no retry limit applies; the
    bucket's rebuild lease is extended over the countdown, so requests meanwhile join
    this task rather than send another.

    ``max_retries=None`` would not do: to Celery it means "the task's default limit",
    and a rebuild waiting for a live holder's lock (held up to the lock TTL) would give
    up after that many short waits, leaving the bucket stale until the killed task's
    message came back (the visibility timeout, minutes).
    """
    cache.extend_rebuild_lease(bucket, countdown)
    return task.retry(countdown=countdown, max_retries=task.request.retries + 1)


def _reach_first(cache: RedisSchedulerCache, accounts: list[Account]) -> None:
    """Put the changes this read found before the outbox did into every other bucket's
    versions, before this one activates: else a reader could see an account's new
    revision here, then its older one (or it in a group it left) in another bucket."""
    rules = runtime.settings()
    for account in cache.accounts_behind(accounts):
        cache.set_account(account, buckets.account_buckets(account, rules=rules))


def _unknown_group(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> bool:
    """Whether ``bucket`` is of a group the source does not have, and was never served:
    a request for it (a typo, a probe) must not register a bucket that every refresh
    would then rebuild. A served bucket whose group went away is written (empty) as
    usual, so its readers stop getting its accounts."""
    if bucket.group_id == 0 or cache.bucket_info(bucket).active_version is not None:
        return False
    return all(group.id != bucket.group_id for group in runtime.get_source().active_groups())


def _too_soon(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> float:
    """Seconds to wait before rebuilding ``bucket`` again; 0 after a quiet spell."""
    interval = runtime.settings().rebuild_min_interval_seconds
    if interval <= 0:
        return 0.0
    built_at = cache.bucket_info(bucket).built_at
    if built_at is None:
        return 0.0
    since = (datetime.now(UTC) - built_at).total_seconds()
    # Capped at the interval: a writer's clock ahead of ours must not stall the bucket.
    wait = min(interval - since, interval)
    return wait if wait > 0.001 else 0.0


def _rebuild_locked(cache: RedisSchedulerCache, bucket: SchedulerBucket) -> str:
    started = time.perf_counter()
    # The run's lease is the longest its lock may be held: killed, its requests are sent
    # again by then (a request meanwhile sends a task at once anyway, which takes the
    # lock within a lease of the death).
    generation = cache.begin_rebuild(bucket, lease_seconds=runtime.settings().lock_ttl_seconds)
    if generation is None:
        cache.record_stats({stats.REBUILDS_SKIPPED: 1})
        return "skipped: every request was covered by a finished rebuild"
    # Reserved before the read: a slower rebuild that read older data cannot win.
    version = cache.reserve_version(bucket)
    accounts = runtime.get_source().accounts_for_bucket(bucket, datetime.now(UTC))
    read_ms = (time.perf_counter() - started) * 1000
    if not accounts and _unknown_group(cache, bucket):
        cache.finish_rebuild(bucket, generation)
        cache.record_stats({stats.REBUILDS_SKIPPED: 1})
        logger.warning(
            "bucket %s: group %d is not in the source; nothing written", bucket, bucket.group_id
        )
        return f"skipped: group {bucket.group_id} is not in the source"
    _reach_first(cache, accounts)
    belongs = buckets.belongs_in(bucket, runtime.settings())
    activated = cache.set_snapshot(bucket, accounts, version, rebuild_ms=read_ms, belongs=belongs)
    activated_at = time.time()
    arrived = cache.finish_rebuild(bucket, generation)
    total_ms = (time.perf_counter() - started) * 1000
    counters = {stats.REBUILDS: 1}
    if not activated:
        counters[stats.REBUILDS_SUPERSEDED] = 1
    cache.record_stats(
        counters,
        {
            stats.LAST_REBUILD_BUCKET: str(bucket),
            stats.LAST_REBUILD_MS: f"{total_ms:.3f}",
            stats.LAST_REBUILD_AT: f"{activated_at:.6f}",
        },
    )
    if arrived:
        logger.debug("bucket %s: %d requests arrived during the rebuild", bucket, arrived)
    state = "active" if activated else "superseded by a newer read"
    return f"v{version} {state}: {len(accounts)} accounts in {total_ms:.1f} ms"


@app.task(name="tasks.refresh_buckets", bind=True, base=RetryingTask)  # type: ignore[untyped-decorator]
def refresh_buckets(self: Task, force: bool = False) -> dict[str, int]:
    """Request a rebuild of every registered and default bucket; retire gone ones.

    Safe to run twice: it holds a named lock for most of its interval (``force``
    ignores it), and its rebuilds are coalesced requests.
    """
    if not isinstance(force, bool):
        raise TypeError(f"force must be a bool, got {brief(force)}")
    s, cache, source = runtime.settings(), runtime.get_cache(), runtime.get_source()
    ttl = s.refresh_interval_seconds * REFRESH_LOCK_SHARE
    if not force and cache.try_lock(REFRESH_LOCK, ttl, token=self.request.id) is None:
        cache.record_stats({stats.REFRESH_SKIPPED: 1})
        return {"skipped": 1}
    groups = source.active_groups()
    defaults = set(buckets.warm_buckets(((g.id, g.platform) for g in groups), s))
    active_groups = {group.id for group in groups}
    stale_before = datetime.now(UTC) - timedelta(
        seconds=s.refresh_interval_seconds * STALE_AFTER_INTERVALS
    )
    figures = {"sent": 0, "coalesced": 0, "requeued": 0, "retired": 0}
    for bucket in buckets.in_order(defaults | set(cache.list_buckets())):
        if bucket not in defaults and not _exists(bucket, active_groups, s.platforms):
            cache.retire_bucket(bucket)
            figures["retired"] += 1
            logger.info(
                "retired bucket %s: its group is gone or inactive, or its platform unknown", bucket
            )
        elif request_rebuild(bucket):
            figures["sent"] += 1
        elif _requeue_if_lost(cache, bucket, stale_before):
            figures["requeued"] += 1
        else:
            figures["coalesced"] += 1
    cache.record_stats(
        {stats.REFRESH_RUNS: 1, stats.BUCKETS_RETIRED: figures["retired"]},
        {stats.LAST_REFRESH_AT: f"{time.time():.6f}"},
    )
    return figures


def _exists(bucket: SchedulerBucket, active_groups: set[int], platforms: list[str]) -> bool:
    if bucket.platform not in platforms:
        return False
    return bucket.group_id == 0 or bucket.group_id in active_groups


def _requeue_if_lost(
    cache: RedisSchedulerCache, bucket: SchedulerBucket, stale_before: datetime
) -> bool:
    """Send a rebuild anew when the queued one has evidently been lost.

    A duplicate costs one skipped task; a lost one would leave the bucket unrefreshed.
    """
    built_at = cache.bucket_info(bucket).built_at
    if built_at is not None and built_at >= stale_before:
        return False
    logger.warning("bucket %s: its queued rebuild looks lost, sending another", bucket)
    cache.abandon_rebuild_request(bucket)
    if not cache.request_rebuild(bucket):
        return False
    send_rebuild(cache, bucket)
    with suppress(CacheError):
        cache.record_stats({stats.REBUILD_REQUESTS_REQUEUED: 1})
    return True
