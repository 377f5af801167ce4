"""Last use of accounts, the web side: touches batched in memory, sent to the cache.

The path of one touch, with no Celery message per request::

    record_last_used(7)          in the web process: max time per account, in memory
      .. every ~0.5 s ..         one update_last_used script call (one round trip):
                                 the cache's last-used hash moves forward, and the
                                 pending hash keeps the time until the database has it
      .. every ~10 s ..          tasks.flush_last_used (beat): pending -> database
                                 (:mod:`tasks.worker.last_used`)

A web process dying between the steps loses nothing that reached Redis: the pending
hash survives it, and the next flush writes it.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol

from cache import CacheError, Clock, CorruptKey, as_utc, brief, check_account_id, utc_now
from tasks import runtime
from tasks.requests import repair_wrong_types
from tasks.runtime import get_web_cache, settings
from tasks.web import aio

logger = logging.getLogger(__name__)

# Touches that reached Redis are remembered this much longer than the database flush
# interval: the worker's flush may start late or take a while.
REMEMBER_MARGIN_SECONDS = 5.0
# ... and the epoch is looked at this often while some are remembered (one GET): a loss
# is noticed long before what it took ages out of memory.
EPOCH_LOOK_SECONDS = 1.0
_UNSEEN = object()

# A fork waits at most this long for a flush in progress (a Redis call that may be
# waiting for its socket timeout) before it goes ahead anyway.
FORK_WAIT_SECONDS = 10.0


class LastUsedSink(Protocol):
    """Where a batcher sends its batches: the cache, or a stand-in in tests."""

    def update_last_used(
        self, updates: Mapping[int, datetime], *, record_pending: bool = False
    ) -> int: ...


class LastUsedBatcher:
    """Keeps the latest touch per account and sends them to the cache in batches.

    :meth:`touch` costs a lock and a dict update, never a network call. A daemon thread,
    started on the first touch, calls :meth:`flush` every ``interval_seconds``; a flush is
    one ``update_last_used(batch, record_pending=True)`` call, so one Redis round trip.
    While Redis is unreachable the batch is kept, merged with newer touches (memory stays
    one entry per account), retried every tick, and the outage is logged once.

    A batch that reached Redis is owed to the database until a worker's next flush
    (``SCHED_LAST_USED_DB_FLUSH_SECONDS``); a Redis that loses its state in between (a
    restart empty, FLUSHALL) loses it with them. So the batcher remembers what it sent
    for longer than that flush interval, watches the epoch (which every loss of state
    changes), and sends those touches again when it changes::

        touch t -> Redis pending ... Redis restarted empty ... worker flush (t missing)
                                     epoch X -> none: t sent again -> pending -> database
    """

    def __init__(
        self,
        cache: LastUsedSink | None = None,
        *,
        cache_factory: Callable[[], LastUsedSink] | None = None,
        interval_seconds: float | None = None,
        clock: Clock = utc_now,
    ) -> None:
        if interval_seconds is not None and not interval_seconds > 0:
            raise ValueError(f"interval_seconds must be > 0, got {interval_seconds}")
        self._cache = cache
        self._cache_factory: Callable[[], LastUsedSink] = cache_factory or get_web_cache
        self._interval = interval_seconds
        self._clock = clock
        self._reset_state()
        # Figures for tests, benchmarks and status views.
        self.flushes = 0
        self.sent = 0
        ref = weakref.ref(self)
        # A fork (gunicorn, a Celery prefork pool) waits for a flush in progress: a
        # child forked while the flusher thread is inside a Redis call inherits the
        # connection pool's lock held, and its first Redis call would hang. The child
        # starts with fresh locks, no batch (the parent sends it) and no thread (the
        # thread did not survive the fork; the next touch starts one).
        os.register_at_fork(
            before=lambda: _call(ref, "_before_fork"),
            after_in_parent=lambda: _call(ref, "_after_fork_in_parent"),
            after_in_child=lambda: _call(ref, "_reset_state"),
        )
        atexit.register(_call, ref, "close")

    def _reset_state(self) -> None:
        self._held_for_fork = False
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._batch: dict[int, datetime] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failing = False
        # Touches sent in this remembering period and in the one before, and the epoch
        # the last flush saw (_UNSEEN before the first).
        self._sent_now: dict[int, datetime] = {}
        self._sent_before: dict[int, datetime] = {}
        self._period_started = time.monotonic()
        self._epoch: object = _UNSEEN
        self._epoch_read_at = -EPOCH_LOOK_SECONDS
        # The cache the remembered touches went to: another one (the process's runtime
        # pointed elsewhere) has its own epoch and owes nothing of them.
        self._remembered_in: object = None

    def _before_fork(self) -> None:
        self._held_for_fork = self._flush_lock.acquire(timeout=FORK_WAIT_SECONDS)

    def _after_fork_in_parent(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._flush_lock.release()

    @property
    def pending(self) -> int:
        """Accounts touched since the last batch that reached the cache."""
        with self._lock:
            return len(self._batch)

    def held(self) -> dict[int, datetime]:
        """The touches not sent yet (the latest per account)."""
        with self._lock:
            return dict(self._batch)

    def touch(self, account_id: int, at: datetime | None = None) -> None:
        """Note that ``account_id`` was used at ``at`` (default: now)."""
        if not isinstance(account_id, int):
            raise ValueError(f"account id must be an int, got {brief(account_id)}")
        # The bounds every part of the system shares: an id the database would refuse
        # never enters a batch, where it would fail every flush after this one.
        check_account_id(account_id)
        if at is None:
            at = self._clock()
        elif not isinstance(at, datetime):
            raise ValueError(
                f"last use of account {account_id} must be a datetime, got {brief(at)}"
            )
        else:
            at = as_utc(at)
        self.touch_checked(account_id, at)

    def touch_checked(self, account_id: int, at: datetime) -> None:
        """As :meth:`touch`, for a valid id and an aware UTC time (a pick's, from the
        cache; or checked by :meth:`touch`): nothing to check again."""
        with self._lock:
            seen = self._batch.get(account_id)
            if seen is None or at > seen:
                self._batch[account_id] = at
        if self._thread is None:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            interval = self._interval or settings().last_used_cache_flush_seconds
            self._thread = threading.Thread(
                target=self._run, args=(interval, self._stop), name="last-used-flusher", daemon=True
            )
            self._thread.start()

    def _run(self, interval: float, stop: threading.Event) -> None:
        while not stop.wait(interval):
            try:
                self.flush()
            except Exception:
                # The thread must outlive any surprise: it is the only way touches leave.
                logger.exception("last-used flush failed; the batch is kept for the next tick")

    def flush(self) -> int:
        """Send the current batch now; returns how many accounts it held (0 if kept)."""
        with self._flush_lock:
            with self._lock:
                batch, self._batch = self._batch, {}
            if not batch:
                if self._sent_now or self._sent_before:
                    self._resend_if_lost(self._same_cache(self._cache or self._cache_factory()))
                return 0
            try:
                # Asked each time, not kept: the process's cache may be replaced.
                cache = self._cache or self._cache_factory()
                cache.update_last_used(batch, record_pending=True)
            except CorruptKey as exc:
                self._keep(batch)
                repair_wrong_types(cache, exc)
                return 0
            except Exception as exc:
                # Kept whatever went wrong: the batch is the only copy of these touches.
                self._keep(batch)
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "last-used batch of %d accounts kept in memory, cache unavailable: %s",
                        len(batch),
                        exc,
                        exc_info=not isinstance(exc, CacheError),
                    )
                return 0
            if self._failing:
                self._failing = False
                logger.warning("last-used batches reach the cache again (%d accounts)", len(batch))
            self.flushes += 1
            self.sent += len(batch)
            self._same_cache(cache)
            self._remember(batch)
            self._resend_if_lost(cache)
            return len(batch)

    def _same_cache(self, cache: LastUsedSink) -> LastUsedSink:
        """``cache``, after forgetting what was remembered for another one."""
        if cache is not self._remembered_in:
            self._sent_now, self._sent_before = {}, {}
            self._epoch = _UNSEEN
            self._remembered_in = cache
        return cache

    def _remember(self, batch: Mapping[int, datetime]) -> None:
        """Keep what reached Redis for at least one database flush interval and a margin:
        two periods of that length, the older dropped as a whole (no per-entry sweep)."""
        period = settings().last_used_db_flush_seconds + REMEMBER_MARGIN_SECONDS
        now = time.monotonic()
        elapsed = now - self._period_started
        if elapsed >= period:
            self._sent_before = {} if elapsed >= 2 * period else self._sent_now
            self._sent_now = {}
            self._period_started = now
        keep_latest(self._sent_now, batch)

    def _resend_if_lost(self, cache: LastUsedSink) -> None:
        """Send the remembered touches again when the epoch moved since the last look:
        Redis lost its state, and with it the uses it still owed the database."""
        read_epoch = getattr(cache, "epoch", None)
        now = time.monotonic()
        if read_epoch is None or now - self._epoch_read_at < EPOCH_LOOK_SECONDS:
            return
        self._epoch_read_at = now
        try:
            epoch = read_epoch()
        except Exception:
            return  # looked at again on the next tick
        seen, self._epoch = self._epoch, epoch
        if seen is _UNSEEN or seen == epoch:
            return
        lost = dict(self._sent_before)
        keep_latest(lost, self._sent_now)
        if not lost:
            return
        # From no epoch to one is also the first start of a system: said quietly.
        logger.log(
            logging.INFO if seen is None else logging.WARNING,
            "redis lost its state (epoch %s -> %s): %d recent last uses sent again",
            seen,
            epoch,
            len(lost),
        )
        try:
            cache.update_last_used(lost, record_pending=True)
        except Exception:
            self._keep(lost)  # the next flush sends them with the batch

    def _keep(self, batch: Mapping[int, datetime]) -> None:
        with self._lock:
            keep_latest(self._batch, batch)

    def close(self) -> None:
        """Stop the flusher thread and send what is left (also run at interpreter exit)."""
        thread = self._thread
        self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        self.flush()
        with self._lock:
            self._thread = None
            self._stop = threading.Event()


def keep_latest(batch: dict[int, datetime], times: Mapping[int, datetime]) -> None:
    """Merge ``times`` into ``batch``, keeping the latest time of each account: the
    order touches and failed batches arrive in never moves a time back."""
    for account_id, at in times.items():
        seen = batch.get(account_id)
        if seen is None or at > seen:
            batch[account_id] = at


def _call(ref: weakref.ReferenceType[LastUsedBatcher], method: str) -> None:
    batcher = ref()
    if batcher is not None:
        getattr(batcher, method)()


_default: LastUsedBatcher | None = None
_default_lock = threading.Lock()


def default_batcher() -> LastUsedBatcher:
    """The process's batcher behind :func:`record_last_used`, built on first use: its
    fork and exit hooks are registered then, not when a worker or a tool merely imports
    this package."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = LastUsedBatcher()
    return _default


def record_last_used(account_id: int, at: datetime | None = None) -> None:
    """Note a use of ``account_id`` for least-recently-used picking; costs no message.

    Seen by this process's own reads at once (its near cache), by other processes' within
    about a second: it reaches the cache within ``SCHED_LAST_USED_CACHE_FLUSH_SECONDS``
    and their near caches' next check after that (``SCHED_LAST_USED_DB_FLUSH_SECONDS``
    later, the database).
    """
    at = utc_now() if at is None else at
    default_batcher().touch(account_id, at)
    _lay_over({account_id: as_utc(at)})


def record_pick(account_id: int, at: datetime, picked_by: object) -> None:
    """A pick's use: as :func:`record_last_used`, where ``picked_by``, the near cache
    that made the pick, laid the use over already (the batcher and the process's other
    near cache still need it)."""
    default_batcher().touch_checked(account_id, at)
    _lay_over({account_id: at}, picked_by)


def _lay_over(updates: Mapping[int, datetime], picked_by: object = None) -> None:
    """This process's own uses, over its near caches (sync and asyncio) but
    ``picked_by``, which laid them over already."""
    near = runtime.get_near_cache()
    if near is not None and near is not picked_by:
        near.note_last_used(updates)
    aio.note_last_used(updates, picked_by)
