"""A near cache for web processes: snapshots served from memory while they are current.

Per process, one background thread holds a subscription to the changes channel (every
activation, patch and retirement publishes ``<bucket> <version> <gen>``) and, every
``check_seconds``, checks in one round trip the epoch, the gen of every held bucket and
the last uses moved since its last look. Requests cost Redis nothing while a bucket is
trusted (see :mod:`cache.nearstate`); a push makes the next request re-read the bucket,
in bounded chunks, fetching only payloads it has not decoded::

    writer:  activate v8 ── PUBLISH ──────────────> subscriber: bucket wants gen 8
    request:                              serve v7 │ request: read v8, serve v8
    lost push (reconnect):  the subscription is re-made: every bucket is re-checked
    silent loss:            the check (at most check_seconds later) sees gen 8
    checker stuck:          trust ends after trust_seconds: requests check themselves
    Redis lost its state:   the epoch changed or vanished: everything is dropped

Memory: at most ``max_buckets`` buckets; accounts are the decoded objects, shared
between buckets that list the same payload (about 2-3 KB each with their payload
bytes in the codec), so roughly (distinct accounts x 3 KB) + (bucket entries x 100 B).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from redis.exceptions import RedisError

from cache.base import redis_errors, text
from cache.client import RedisSchedulerCache
from cache.errors import CacheError
from cache.keys import NEAR_BUCKETS_MAX, NEAR_CHECK_SECONDS, NEAR_TRUST_SECONDS, TOUCH_CHUNK
from cache.models import Account, SchedulerBucket
from cache.nearstate import NO_EPOCH, NearState

logger = logging.getLogger(__name__)

# Reading a bucket is retried this often when a racing read installed something else.
SERVE_ATTEMPTS = 3
# Pause after the subscription or the check failed, before trying again.
RETRY_SECONDS = 0.2


def parse_push(data: bytes | str) -> tuple[str, int] | None:
    """``(bucket name, gen)`` from a message on the changes channel."""
    parts = text(data).split(" ")
    if len(parts) != 3 or not parts[2].isdigit():
        return None
    return parts[0], int(parts[2])


@dataclass(frozen=True, slots=True)
class Touches:
    """What one look at the last-use log found."""

    ids: list[bytes]  # accounts whose last use moved, to fetch
    next_since: int  # where the next look starts
    lost: bool  # batches were trimmed before this process read them


def read_touches(since: int, seq: int, found: list[tuple[bytes, float]], limit: int) -> Touches:
    """The accounts named by the log's batches after ``since`` (``<seq>:<id>,<id>...``),
    read at counter ``seq``. A first batch past ``since + 1``, or none at all while the
    counter moved, means the log was trimmed past this process: it cannot know what
    moved, and must read what it holds again."""
    first = int(found[0][1]) if found else seq + 1
    lost = first > since + 1 and seq > since
    ids = {i for member, _ in found for i in member.partition(b":")[2].split(b",") if i}
    # A truncated read goes on after its last batch; a whole one after the counter.
    next_since = int(found[-1][1]) if len(found) >= limit else max(seq, since)
    return Touches(sorted(ids), next_since, lost)


class NearCache:
    """Snapshots of a :class:`RedisSchedulerCache` kept in this process's memory."""

    def __init__(
        self,
        cache: RedisSchedulerCache,
        *,
        check_seconds: float = NEAR_CHECK_SECONDS,
        trust_seconds: float = NEAR_TRUST_SECONDS,
        max_buckets: int = NEAR_BUCKETS_MAX,
        monotonic: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self.cache = cache
        self.check_seconds = check_seconds
        self.monotonic = monotonic
        self.background = background
        self.state = NearState.checked_every(
            check_seconds, trust_seconds=trust_seconds, max_buckets=max_buckets, monotonic=monotonic
        )
        self._start_lock = threading.Lock()
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading ---------------------------------------------------------------------
    def list_schedulable(self, bucket: SchedulerBucket, now: datetime) -> list[Account] | None:
        """The accounts of ``bucket`` schedulable at ``now``, in order; None on a miss
        (no active version, or a missing or corrupt payload). An active snapshot with
        no account gives ``[]``. Served from memory while trusted."""
        return self._get(bucket, now)

    def get_snapshot(self, bucket: SchedulerBucket) -> list[Account] | None:
        """As :meth:`RedisSchedulerCache.get_snapshot` (every candidate, None for an
        empty snapshot), served from memory while trusted."""
        return self._get(bucket, None) or None

    def _get(self, bucket: SchedulerBucket, now: datetime | None) -> list[Account] | None:
        self._ensure_started()
        name = str(bucket)
        read: list[Account] | None = None
        for _ in range(SERVE_ATTEMPTS):
            state, accounts = self.state.serve(name, now)
            if state == "hit":
                return accounts
            if state == "check":
                self.check([name])
                continue
            read = self._read(bucket)
            if read is None:
                return None
        if read is None:
            read = self._read(bucket)
            if read is None:
                return None
        # Racing reads kept replacing each other: answer from this request's own read.
        return [a for a in read if now is None or a.is_schedulable(now)]

    def _read(self, bucket: SchedulerBucket) -> list[Account] | None:
        asked_at = self.monotonic()
        epoch = self._epoch()
        read = self.cache.read_snapshot(bucket)
        if read is None:
            self.state.forget(str(bucket))
            return None
        self.state.install(read, asked_at, epoch)
        return read.accounts

    def _epoch(self) -> str:
        """The epoch, and the touch log's position if none is held yet (taken before
        any bucket is read, so no touch between the two is missed). Once both are held,
        the check keeps them current: a read needs no round trip for them."""
        held = self.state.epoch
        if held is not None and self.state.touch_seq is not None:
            return held
        with redis_errors("near cache epoch"):
            pipe = self.cache.client.pipeline(transaction=False)
            pipe.get(self.cache.keys.last_used_seq)
            pipe.get(self.cache.keys.epoch)
            seq, epoch = pipe.execute()
        epoch = NO_EPOCH if epoch is None else text(epoch)
        if epoch != self.state.epoch:
            self.state.drop_all(epoch)
        if self.state.touch_seq is None:
            self.state.touch_seq = int(seq or 0)
        return epoch

    # -- last uses -------------------------------------------------------------------
    def note_last_used(self, updates: Mapping[int, datetime]) -> None:
        """This process's own touches, visible to its reads at once (send them to Redis
        with :meth:`RedisSchedulerCache.update_last_used` as well)."""
        self.state.used_at(updates)

    # -- the backstop ----------------------------------------------------------------
    def check(self, names: list[str] | None = None) -> None:
        """One check: epoch, the gens of ``names`` (default: every held bucket), and
        last uses moved since the last check. One round trip (two with new touches)."""
        keys = self.cache.keys
        names = self.state.names() if names is None else names
        since = self.state.touch_seq
        asked_at = self.monotonic()
        with redis_errors("near cache check"):
            pipe = self.cache.client.pipeline(transaction=False)
            pipe.get(keys.last_used_seq)
            pipe.get(keys.epoch)
            if since is not None:
                pipe.zrangebyscore(
                    keys.last_used_log, f"({since}", "+inf", 0, TOUCH_CHUNK, withscores=True
                )
            for name in names:
                pipe.hmget(keys.meta(SchedulerBucket.parse(name)), ["active", "gen"])
            replies = pipe.execute()
            seq, epoch = int(replies[0] or 0), replies[1]
            touched: list[tuple[bytes, float]] = replies[2] if since is not None else []
            metas = replies[3:] if since is not None else replies[2:]
            held = NO_EPOCH if epoch is None else text(epoch)
            gens = {
                name: int(gen or 0) if active is not None else None
                for name, (active, gen) in zip(names, metas, strict=True)
            }
            self.state.checked(held, gens, asked_at)
            if since is None or self.state.touch_seq is None:
                # Not from here: a bucket read since may have taken an earlier position.
                if self.state.touch_seq is None:
                    self.state.touch_seq = seq
                return
            touches = read_touches(since, seq, touched, TOUCH_CHUNK)
            if touches.lost:
                self.state.drop_all(self.state.epoch)
                return
            if touches.ids:
                ids = touches.ids
                uses = cast(list[bytes | None], self.cache.client.hmget(keys.last_used, ids))
                self.state.used({int(i): int(u) for i, u in zip(ids, uses, strict=True) if u})
            self.state.touch_seq = touches.next_since

    # -- the background thread -------------------------------------------------------
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

    def _run(self) -> None:
        pubsub: Any = None
        next_check = 0.0
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.cache.client.pubsub()  # type: ignore[no-untyped-call, unused-ignore]
                    pubsub.subscribe(self.cache.keys.changes_channel)
                wait = min(max(next_check - self.monotonic(), 0.0), 1.0)
                message = pubsub.get_message(timeout=wait)
                if message is not None:
                    self._on_message(message)
                if self.monotonic() >= next_check:
                    next_check = self.monotonic() + self.check_seconds
                    self.check()
            except (RedisError, OSError, CacheError) as exc:
                logger.info("near cache: subscription or check failed, retrying: %s", exc)
                self.state.distrust()
                if pubsub is not None:
                    self._close_quietly(pubsub)
                    pubsub = None
                self._stop.wait(RETRY_SECONDS)
        if pubsub is not None:
            self._close_quietly(pubsub)

    def _on_message(self, message: Mapping[str, Any]) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            # Changes made while there was no subscription were not pushed.
            self.state.distrust()
        elif kind == "message":
            push = parse_push(message["data"])
            if push is not None:
                self.state.pushed(*push)

    @staticmethod
    def _close_quietly(pubsub: Any) -> None:
        try:
            pubsub.close()
        except (RedisError, OSError) as exc:
            logger.debug("near cache: closing the subscription failed: %s", exc)

    def close(self) -> None:
        """Stop the background thread (it also stops with the process)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=5)
        self._pid = None
