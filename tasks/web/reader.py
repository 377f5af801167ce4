"""Reading a bucket's schedulable accounts, for web apps.

The snapshot keeps accounts held back until a known time (rate limit, overload,
temporary block), and this reader filters them at read time: an account comes back
the moment its window ends, with no event and no rebuild.

On a miss it reads the source directly (switchable, rate limited) and writes what it
read through a version reserved before the read, so a fallback can never activate
data older than a rebuild's. A web role that may not write snapshots
(``SCHED_FALLBACK_WRITES=false``, or a write Redis refuses) answers from the source
without writing, and the rebuild it requests writes the snapshot.

A miss on a group the source does not know answers empty before any of that: no source
read beyond :class:`tasks.web.groups.KnownGroups`'s, no Redis write, no registration.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from datetime import UTC, datetime

from cache import (
    Account,
    CacheError,
    CacheUnavailable,
    CorruptKey,
    RedisSchedulerCache,
    SchedulerBucket,
)
from tasks import runtime, stats
from tasks.buckets import belongs_in, bucket_for, check_platform
from tasks.settings import Settings
from tasks.web.groups import KnownGroups
from tasks.web.last_used import default_batcher, keep_latest
from tasks.web.marks import without_marked
from tasks.web.requests import request_rebuild

logger = logging.getLogger(__name__)


class TokenBucket:
    """``rate`` permits a second, bursts up to ``burst``.

    Process-local on purpose: the miss path must not cost another round trip to a
    Redis that may be the reason for the miss. N web processes fall back at up to N
    times the rate together.
    """

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 per second, got {rate}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self._clock = clock
        self._tokens = self.burst
        self._at = clock()
        self._lock = threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


_limiter: TokenBucket | None = None
_limiter_lock = threading.Lock()


def _fallback_permit(s: Settings) -> bool:
    global _limiter
    if not s.fallback_enabled:
        return False
    with _limiter_lock:
        if _limiter is None or _limiter.rate != s.fallback_per_second:
            _limiter = TokenBucket(s.fallback_per_second)
        limiter = _limiter
    return limiter.try_take()


_known: tuple[Settings, KnownGroups] | None = None
_read_only_noted = False


def knows_group(group_id: int, s: Settings) -> bool:
    """Whether the source knows ``group_id`` (group 0 always), per :class:`KnownGroups`,
    kept per process for the settings in force."""
    global _known
    with _limiter_lock:
        if _known is None or _known[0] is not s:
            known = KnownGroups(
                lambda: [group.id for group in runtime.get_source().active_groups()],
                ttl=s.unknown_group_ttl_seconds,
                max_unknown=s.unknown_groups_max,
            )
            _known = (s, known)
        known = _known[1]
    return known.knows(group_id)


def list_schedulable(
    group_id: int, platform: str, has_force: bool = False, *, now: datetime | None = None
) -> Sequence[Account]:
    """The accounts a request for ``(group_id, platform)`` may use at ``now``, in order,
    less those this process marked unschedulable (:mod:`tasks.web.marks`) until the
    cache shows the mark."""
    now = now or datetime.now(UTC)
    return without_marked(_list_schedulable(group_id, platform, has_force, now=now), now)


def _list_schedulable(
    group_id: int, platform: str, has_force: bool = False, *, now: datetime | None = None
) -> Sequence[Account]:
    """The accounts a request for ``(group_id, platform)`` may use at ``now``, in order.

    Served from the process's near cache while Redis confirms it (``SCHED_NEAR_CACHE``),
    else read from Redis. A platform that is not configured raises
    :class:`tasks.buckets.UnknownPlatform` (a ``ValueError``): no bucket is read, built
    or registered for it.
    """
    s, bucket, now = resolve(group_id, platform, has_force, now)
    cache = runtime.get_web_cache()
    near = runtime.get_near_cache()
    try:
        if near is not None:
            # Already filtered at ``now``; [] is an active snapshot with no account.
            found = near.list_schedulable(bucket, now)
            if found is not None:
                return found
        else:
            snapshot = cache.get_snapshot(bucket)
            if snapshot is not None:
                return schedulable(snapshot, now)
    except CacheUnavailable as exc:
        return schedulable(latest_uses(None, on_unavailable(bucket, s, exc)), now)
    except CorruptKey as exc:
        return schedulable(latest_uses(cache, on_corrupt_key(cache, bucket, s, exc)), now)
    return schedulable(latest_uses(cache, on_miss(cache, bucket, s)), now)


def latest_uses(cache: RedisSchedulerCache | None, accounts: list[Account]) -> list[Account]:
    """``accounts`` read from the source, each with the latest last use known here: the
    source's lags Redis's by up to the flush interval, so answering with it alone would
    show a reader last use going back between a cached read and a fallback."""
    if not accounts:
        return accounts
    latest: dict[int, datetime] = {}
    if cache is not None:
        with suppress(CacheError):
            latest = cache.last_used_of([a.id for a in accounts])
    keep_latest(latest, default_batcher().held())
    return [_used_at(account, latest.get(account.id)) for account in accounts]


def _used_at(account: Account, latest: datetime | None) -> Account:
    if latest is None or (account.last_used_at is not None and account.last_used_at >= latest):
        return account
    return account.model_copy(update={"last_used_at": latest})


class Resolved:
    """The buckets requests named lately under the settings in force: a request asks
    for the same few buckets over and over, and building and checking one costs more
    than the pick it leads to. Forgotten when the settings are replaced."""

    # Different requests' buckets remembered at most (past it, all are forgotten).
    MAX = 4096

    def __init__(self) -> None:
        # The settings and their buckets in one attribute, replaced in one store: a
        # thread never finds one settings' buckets under another's.
        self._held: tuple[Settings | None, dict[tuple[int, str, bool], SchedulerBucket]] = (
            None,
            {},
        )

    def bucket(self, group_id: int, platform: str, has_force: bool, s: Settings) -> SchedulerBucket:
        # Only plain ints and strs are looked up: True would find group 1's bucket.
        if type(group_id) is not int or type(platform) is not str:
            check_platform(platform, s)
            return bucket_for(group_id, platform, has_force, s)
        key = (group_id, platform, bool(has_force))
        held, buckets = self._held
        if held is s:
            found = buckets.get(key)
            if found is not None:
                return found
        check_platform(platform, s)
        bucket = bucket_for(group_id, platform, has_force, s)
        if held is not s or len(buckets) >= self.MAX:
            buckets = {}
            self._held = (s, buckets)
        buckets[key] = bucket
        return bucket


_resolved = Resolved()


def resolve(
    group_id: int, platform: str, has_force: bool, now: datetime | None
) -> tuple[Settings, SchedulerBucket, datetime]:
    """The settings in force, the bucket a request reads, and the time it reads at."""
    s = runtime.settings()
    return s, _resolved.bucket(group_id, platform, has_force, s), now or datetime.now(UTC)


def schedulable(accounts: list[Account], now: datetime) -> list[Account]:
    return [account for account in accounts if account.is_schedulable(now)]


def on_unavailable(bucket: SchedulerBucket, s: Settings, exc: CacheUnavailable) -> list[Account]:
    """Redis cannot be reached: read the source (rate limited), else raise ``exc``."""
    if not knows_group(bucket.group_id, s):
        return []
    if not _fallback_permit(s):
        raise exc
    logger.warning("bucket %s: cache unavailable, reading the source: %s", bucket, exc)
    return runtime.get_source().accounts_for_bucket(bucket, datetime.now(UTC))


def on_corrupt_key(
    cache: RedisSchedulerCache, bucket: SchedulerBucket, s: Settings, exc: CorruptKey
) -> list[Account]:
    """A key of the wrong type under the read: read the source (rate limited) and ask
    for the rebuild whose write repairs the key. The web app gets accounts, not a
    Redis error it can do nothing about."""
    named: object = "unknown"
    with suppress(CacheError):
        named = cache.wrong_type_keys(bucket) or "none any more"
        cache.record_stats({stats.CACHE_READ_ERRORS: 1})
    logger.error(
        "bucket %s: snapshot unreadable (%s); keys of the wrong type: %s", bucket, exc, named
    )
    _request(bucket)
    if not _fallback_permit(s):
        return []
    return runtime.get_source().accounts_for_bucket(bucket, datetime.now(UTC))


def on_miss(cache: RedisSchedulerCache, bucket: SchedulerBucket, s: Settings) -> list[Account]:
    if not knows_group(bucket.group_id, s):
        logger.debug("bucket %s: miss on a group the source does not know", bucket)
        return []
    info = cache.bucket_info(bucket)
    if info.active_version is not None and info.account_count == 0:
        return []  # an active snapshot with no account: empty, not missing
    with suppress(CacheError):
        # A missing or undecodable payload: the rebuild requested below writes it.
        cache.record_stats({stats.SNAPSHOT_MISSES: 1})
    if not _fallback_permit(s):
        logger.info(
            "bucket %s: miss, %s; rebuild requested",
            bucket,
            "fallback rate-limited" if s.fallback_enabled else "fallback off",
        )
        _request(bucket)
        return []
    accounts = _fallback_read(cache, bucket, s)
    with suppress(CacheError):
        cache.record_stats({stats.FALLBACK_READS: 1})
    _request(bucket)
    return accounts


def _fallback_read(
    cache: RedisSchedulerCache, bucket: SchedulerBucket, s: Settings
) -> list[Account]:
    """The bucket's accounts from the source, written through a version reserved before
    the read when this process may write snapshots."""
    version: int | None = None
    if s.fallback_writes:
        try:
            version = cache.reserve_version(bucket)
        except CacheUnavailable:
            raise
        except CacheError as exc:
            _note_read_only(bucket, exc)
    accounts = runtime.get_source().accounts_for_bucket(bucket, datetime.now(UTC))
    if version is not None:
        try:
            belongs = belongs_in(bucket, runtime.settings())
            cache.set_snapshot(bucket, accounts, version, belongs=belongs)
        except CacheUnavailable:
            raise
        except CacheError as exc:
            _note_read_only(bucket, exc)
    return accounts


def _note_read_only(bucket: SchedulerBucket, exc: CacheError) -> None:
    # A web role whose ACL refuses snapshot writes (docs/security.md): the answer comes
    # from the source all the same. Said once per process, not once per miss.
    global _read_only_noted
    if not _read_only_noted:
        _read_only_noted = True
        logger.warning(
            "bucket %s: fallback write refused (%s); answering misses from the source "
            "without writing (set SCHED_FALLBACK_WRITES=false under a read-only web role)",
            bucket,
            exc,
        )


def _request(bucket: SchedulerBucket) -> None:
    # The read must not fail because the broker does: the next miss asks again.
    try:
        request_rebuild(bucket)
    except Exception as exc:
        logger.warning("bucket %s: could not request a rebuild: %s", bucket, exc)
