"""A bucket's rebuild lock, held for as long as its rebuild lives and hardly longer.

The lock's key lives :data:`LOCK_LEASE_SECONDS` past its last renewal, and one thread of
the holding process renews it every third of that, for at most ``lock_ttl_seconds``
from taking it (the hard time limit has ended the rebuild by then). A live rebuild keeps
its lock; one whose process died frees its bucket within a lease, not the lock TTL.

A Sentinel failover is where that matters most, since there the holder always dies with
its lock still set::

    old master   a rebuild takes its bucket's lock; the lock is replicated ... SIGKILL
    worker       the consumer loses the broker and Celery terminates the rebuild in hand
                 (worker_cancel_long_running_tasks_on_connection_loss); its unlock
                 could not have reached a master anyway
    new master   holds the lock, with no holder left to release it
    a change     its rebuild waits for that lock: the lock TTL (30 s) before, at most
                 one lease after the holder's last renewal now
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from cache import CacheError, RedisSchedulerCache, SchedulerBucket

logger = logging.getLogger(__name__)

# How long a bucket's lock outlives its holder's last renewal. Short, because it is how
# long a bucket waits after its rebuilder died with the lock (a killed worker, a
# failover); long enough that three renewals in a row must fail before a live
# rebuild loses its lock (a rebuild that does is still safe: versions are reserved
# before the read, so the newer of two overlapping rebuilds wins).
LOCK_LEASE_SECONDS = 3.0
RENEWALS_PER_LEASE = 3


@dataclass(eq=False)
class _Hold:
    cache: RedisSchedulerCache
    bucket: SchedulerBucket
    token: str
    lease: float
    until: float  # monotonic; no renewal past it
    due: float  # monotonic time of the next renewal
    done: bool = False
    # Held while renewing, and to end the hold: no renewal can follow the unlock.
    mutex: threading.Lock = field(default_factory=threading.Lock)


class LockKeeper:
    """Renews the bucket locks its process holds, from one thread started on first use."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holds: list[_Hold] = []
        self._thread: threading.Thread | None = None

    @contextmanager
    def held(
        self,
        cache: RedisSchedulerCache,
        bucket: SchedulerBucket,
        token: str,
        *,
        longest: float,
        lease: float = LOCK_LEASE_SECONDS,
    ) -> Iterator[None]:
        """Keep the lock ``token`` took with a TTL of ``lease`` for the ``with`` block,
        at most ``longest`` seconds. Release it after the block, not in it."""
        now = time.monotonic()
        hold = _Hold(cache, bucket, token, lease, now + longest, now + lease / RENEWALS_PER_LEASE)
        with self._cond:
            self._holds.append(hold)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="bucket-lock-keeper", daemon=True
                )
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with hold.mutex:  # waits for a renewal in flight
                hold.done = True
            with self._cond:
                self._holds.remove(hold)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                live = [hold for hold in self._holds if not hold.done]
                due = [hold for hold in live if hold.due <= now]
                if not due:
                    nearest = min((hold.due for hold in live), default=None)
                    self._cond.wait(None if nearest is None else nearest - now)
                    continue
            for hold in due:  # outside the condition: a renewal is a round trip
                try:
                    self._renew(hold)
                except Exception:  # a bug: say so, and keep the other holds renewed
                    logger.exception("bucket %s: renewing its lock failed", hold.bucket)
                    hold.done = True

    def _renew(self, hold: _Hold) -> None:
        with hold.mutex:
            if hold.done:
                return
            ttl = min(hold.lease, hold.until - time.monotonic())
            if ttl <= 0:
                hold.done = True  # past the lock TTL: it expires by itself
                return
            try:
                kept = hold.cache.try_lock_bucket(hold.bucket, ttl, token=hold.token) is not None
            except CacheError as exc:
                # Redis unreachable, or failing over: the next renewal tries again, and
                # the lock expires meanwhile only if no master answers for a lease.
                logger.debug("bucket %s: lock not renewed: %s", hold.bucket, exc)
                kept = True
            hold.due = time.monotonic() + hold.lease / RENEWALS_PER_LEASE
            if not kept:
                hold.done = True
                logger.warning(
                    "bucket %s: its rebuild lock expired unrenewed and another rebuild "
                    "took it; the newer of the two rebuilds wins",
                    hold.bucket,
                )


_keepers: dict[int, LockKeeper] = {}


def lock_keeper() -> LockKeeper:
    """This process's keeper: a forked pool child gets its own, and its own thread."""
    pid = os.getpid()
    keeper = _keepers.get(pid)
    if keeper is None:
        keeper = _keepers[pid] = LockKeeper()
    return keeper
