"""A near cache for web processes: snapshots served from memory while they are current.

Per process, one background thread holds a subscription to the changes channel (every
activation, patch and retirement publishes ``<bucket> <version> <gen>``, a change of
one account ``<bucket> <version> <gen> <account id>``) and, every ``check_seconds``,
checks in one round trip the epoch, the gen of every held bucket and the last uses moved
since its last look. Requests cost Redis nothing while a bucket is trusted (see
:mod:`cache.nearstate`); a change of one account that follows what is held is applied
in place (:mod:`cache.nearpush`), any other push makes the next request re-read the
bucket, in bounded chunks, fetching only payloads it does not hold::

    writer:  activate v8 ── PUBLISH ──────────────> subscriber: bucket wants gen 8
    request:                              serve v7 │ request: read v8, serve v8
    lost push (reconnect):  the subscription is re-made: every bucket is re-checked
    silent loss:            the check (at most check_seconds later) sees gen 8
    checker stuck:          trust ends after trust_seconds: requests check themselves
    Redis lost its state:   the epoch changed or vanished: everything is dropped

Memory: at most ``max_buckets`` buckets and ``max_accounts`` accounts over all of them,
each a row of about 800 bytes with its pick entry (:mod:`cache.nearrows`), and up to
``max_decoded`` of them with their accounts kept decoded as well (about 3 KB each;
:mod:`cache.nearhold`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from cache.base import redis_errors
from cache.client import RedisSchedulerCache
from cache.errors import CacheError
from cache.keys import (
    NEAR_ACCOUNTS_MAX,
    NEAR_BUCKETS_MAX,
    NEAR_CHECK_SECONDS,
    NEAR_DECODED_MAX,
    NEAR_TRUST_SECONDS,
)
from cache.models import Account, SchedulerBucket
from cache.nearcore import (
    ReadBucket,
    Request,
    Steps,
    check,
    hit,
    pick,
    picked,
    serve,
)
from cache.nearpush import RETRY_SECONDS, Backstop, Push, patch
from cache.nearstate import NearState
from cache.pickindex import Choice

logger = logging.getLogger(__name__)


class NearCache:
    """Snapshots of a :class:`RedisSchedulerCache` kept in this process's memory.

    A thin driver: :mod:`cache.nearcore` decides, this runs its requests on redis-py.
    :class:`cache.aio.AsyncNearCache` is its twin, method for method.
    """

    def __init__(
        self,
        cache: RedisSchedulerCache,
        *,
        check_seconds: float = NEAR_CHECK_SECONDS,
        trust_seconds: float = NEAR_TRUST_SECONDS,
        max_buckets: int = NEAR_BUCKETS_MAX,
        max_accounts: int = NEAR_ACCOUNTS_MAX,
        max_decoded: int = NEAR_DECODED_MAX,
        monotonic: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self.cache = cache
        self.check_seconds = check_seconds
        self.monotonic = monotonic
        self.background = background
        self.state = NearState.checked_every(
            check_seconds,
            trust_seconds=trust_seconds,
            monotonic=monotonic,
            max_buckets=max_buckets,
            max_accounts=max_accounts,
            max_decoded=max_decoded,
        )
        self._start_lock = threading.Lock()
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading ---------------------------------------------------------------------
    def list_schedulable(self, bucket: SchedulerBucket, now: datetime) -> Sequence[Account] | None:
        """The accounts of ``bucket`` schedulable at ``now``, in order; None on a miss
        (no active version, or a missing or corrupt payload). An active snapshot with
        no account gives ``[]``. Served from memory while trusted."""
        return self._get(bucket, now)

    def get_snapshot(self, bucket: SchedulerBucket) -> Sequence[Account] | None:
        """As :meth:`RedisSchedulerCache.get_snapshot` (every candidate, None for an
        empty snapshot), served from memory while trusted."""
        return self._get(bucket, None) or None

    def pick(
        self, bucket: SchedulerBucket, now: datetime, exclude: Collection[int] = ()
    ) -> Choice | None:
        """The account to send a request through at ``now``: the bucket's first
        schedulable account in pick order (:mod:`cache.pickindex`) not in ``exclude``,
        its use laid over at once; ``Choice(None, now)`` when none is left, None on a
        miss. Served from the held index while the bucket is trusted."""
        self._ensure_started()
        choice = picked(self.state, str(bucket), now, exclude)
        if choice is not None:
            return choice
        result: Choice | None = self._drive(
            pick(self.state, self.cache.keys, bucket, now, exclude, self.monotonic)
        )
        return result

    def note_last_used(self, updates: Mapping[int, datetime]) -> None:
        """This process's own touches, visible to its reads at once (send them to Redis
        with :meth:`RedisSchedulerCache.update_last_used` as well)."""
        self.state.used_at(updates)

    def check(self, names: list[str] | None = None) -> None:
        """One check: epoch, the gens of ``names`` (default: every held bucket), and
        last uses moved since the last check. One round trip (two with new touches)."""
        self._drive(check(self.state, self.cache.keys, names, self.monotonic))

    def _get(self, bucket: SchedulerBucket, now: datetime | None) -> Sequence[Account] | None:
        self._ensure_started()
        accounts = hit(self.state, str(bucket), now)
        if accounts is not None:
            return accounts
        result: Sequence[Account] | None = self._drive(
            serve(self.state, self.cache.keys, bucket, now, self.monotonic)
        )
        return result

    def patch(self, push: Push) -> None:
        """Apply a pushed change of one account to the held bucket (:mod:`cache.nearpatch`);
        when it cannot be, the bucket is read again by the next request."""
        try:
            self._drive(patch(self.state, self.cache.keys, push, self.monotonic))
        except BaseException:
            self.state.pushed(push.bucket, push.gen)
            raise

    # -- running the core's requests ---------------------------------------------------
    def _drive(self, steps: Steps) -> Any:
        try:
            request = next(steps)
            while True:
                request = steps.send(self._do(request))
        except StopIteration as done:
            return done.value

    def _do(self, request: Request) -> Any:
        if isinstance(request, ReadBucket):
            return self.cache.read_rows(request.bucket, request.held)
        with redis_errors(request.what):
            pipe = self.cache.client.pipeline(transaction=False)
            for method, args in request.commands:
                getattr(pipe, method)(*args)
            return pipe.execute()

    # -- the background loop -------------------------------------------------------------
    def _run(self) -> None:
        backstop = Backstop(self.state, self.check_seconds, self.monotonic)
        pubsub: Any = None
        try:
            while not self._stopped():
                try:
                    if pubsub is None:
                        pubsub = self._subscribe()
                    push = backstop.heard(pubsub.get_message(timeout=backstop.wait()))
                    if push is not None:
                        self.patch(push)
                    if backstop.due():
                        self.check()
                except (RedisError, OSError, CacheError) as exc:
                    backstop.failed(exc)
                    if pubsub is not None:
                        self._close_quietly(pubsub)
                        pubsub = None
                    self._pause(RETRY_SECONDS)
        finally:
            if pubsub is not None:
                self._close_quietly(pubsub)

    def _close_quietly(self, pubsub: Any) -> None:
        try:
            pubsub.close()
        except (RedisError, OSError) as exc:
            logger.debug("near cache: closing the subscription failed: %s", exc)

    # -- threads and processes (what differs from the asyncio twin) -------------------
    def _subscribe(self) -> Any:
        pubsub = self.cache.client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
        pubsub.subscribe(self.cache.keys.changes_channel)
        return pubsub

    def _stopped(self) -> bool:
        return self._stop.is_set()

    def _pause(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _ensure_started(self) -> None:
        if not self.background or self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid == os.getpid():
                return
            # A forked child starts over: the parent's thread did not come along.
            self.state.drop_all()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, name="sched-near-cache", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def close(self) -> None:
        """Stop the background thread (it also stops with the process)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        self._pid = None
