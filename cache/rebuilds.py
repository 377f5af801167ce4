"""Coalesced rebuild requests: a burst of requests for a bucket costs one or two
rebuilds, and a request that arrives during a rebuild is never lost.

A queued task holds a lease (a deadline), not a flag: while it lasts, requests only
count; once it has passed, the next request enqueues again. So a task lost with a
killed worker (reserved, or waiting for its countdown) stops holding its bucket after
seconds, not the broker's visibility timeout. Every lease is also noted in one sorted
set, so that :meth:`RebuildRequests.reclaim_expired` (run by the outbox poll) re-sends
the rebuild of a bucket whose lease expired with requests outstanding, looking only at
the expired ones: a change that arrived within a lost task's lease is not left waiting
for the next change.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cache.base import Wiring, redis_errors
from cache.keys import REBUILD_LEASE_SECONDS, REBUILD_STATE_TTL_SECONDS
from cache.models import SchedulerBucket

# Expired leases looked at per call of reclaim_expired: bounded work per poll.
RECLAIM_CHUNK = 200


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _now_ms() -> int:
    # The caller's clock, not the server's (TIME): a web process may run the request
    # script under a role allowed no command beyond what it needs. Hosts keep their
    # clocks within milliseconds; a skew of s only moves a lease by s.
    return round(time.time() * 1000)


class RebuildRequests:
    """The only writer of the buckets' rebuild request state and of the lease set."""

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def request_rebuild(self, bucket: SchedulerBucket) -> bool:
        """Note a rebuild request; True when the caller must enqueue a rebuild task."""
        key = self._w.keys.rebuild_state(bucket)
        with redis_errors(f"request_rebuild {bucket}", key):
            send, deadline = self._w.scripts["request_rebuild"](
                keys=[key], args=[REBUILD_STATE_TTL_SECONDS, _ms(REBUILD_LEASE_SECONDS), _now_ms()]
            )
        self._note_lease(bucket, int(deadline))
        return bool(int(send))

    def extend_lease(self, bucket: SchedulerBucket, countdown: float) -> None:
        """Keep the lease of a queued task that re-sends itself to run in ``countdown``
        seconds: requests meanwhile join it, and only until it is due."""
        key = self._w.keys.rebuild_state(bucket)
        with redis_errors(f"extend_rebuild_lease {bucket}", key):
            deadline = self._w.scripts["extend_rebuild_lease"](
                keys=[key],
                args=[
                    REBUILD_STATE_TTL_SECONDS,
                    _ms(countdown + REBUILD_LEASE_SECONDS),
                    _now_ms(),
                ],
            )
        self._note_lease(bucket, int(deadline))

    def begin_rebuild(
        self, bucket: SchedulerBucket, *, force: bool = False, lease_seconds: float = 60.0
    ) -> int | None:
        """Call holding the lock, before reading the source.

        Returns the request generation this run covers, or None when every request so
        far is covered by a finished run already (skip the rebuild). Requests from now
        on make :meth:`request_rebuild` return True again. The run holds a lease of
        ``lease_seconds`` (its lock's TTL): if it has not finished by then, the requests
        it covered are sent again.
        """
        key = self._w.keys.rebuild_state(bucket)
        with redis_errors(f"begin_rebuild {bucket}", key):
            generation = int(
                self._w.scripts["begin_rebuild"](
                    keys=[key],
                    args=[
                        "1" if force else "0",
                        REBUILD_STATE_TTL_SECONDS,
                        _ms(lease_seconds),
                        _now_ms(),
                    ],
                )
            )
        return None if generation < 0 else generation

    def finish_rebuild(self, bucket: SchedulerBucket, generation: int) -> int:
        """Record a written rebuild; returns how many requests arrived during it."""
        key = self._w.keys.rebuild_state(bucket)
        with redis_errors(f"finish_rebuild {bucket}", key):
            return int(
                self._w.scripts["finish_rebuild"](
                    keys=[key], args=[generation, REBUILD_STATE_TTL_SECONDS]
                )
            )

    def reclaim_expired(self, send: Callable[[SchedulerBucket], None]) -> int:
        """Re-send (through ``send``) the rebuild of every bucket whose lease expired
        with requests outstanding; forget the leases of settled buckets. Returns how
        many were sent. The caller of ``send`` holds the new lease."""
        leases = self._w.keys.rebuild_leases
        with redis_errors("due_rebuild_leases", leases):
            due = self._w.scripts["due_rebuild_leases"](
                keys=[leases], args=[RECLAIM_CHUNK, _now_ms()]
            )
        sent = 0
        for raw, seen in zip(due[::2], due[1::2], strict=True):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            try:
                bucket = SchedulerBucket.parse(name)
            except ValueError:
                # Nothing this package wrote: dropped, so it is not looked at forever.
                self._release(name, float(seen))
                continue
            key = self._w.keys.rebuild_state(bucket)
            with redis_errors(f"reclaim_rebuild {bucket}", key):
                verdict, deadline = self._w.scripts["reclaim_rebuild"](
                    keys=[key],
                    args=[REBUILD_STATE_TTL_SECONDS, _ms(REBUILD_LEASE_SECONDS), _now_ms()],
                )
            if int(verdict) < 0:
                self._release(name, float(seen))
                continue
            self._note_lease(bucket, int(deadline))
            if int(verdict) == 1:
                send(bucket)
                sent += 1
        return sent

    def abandon_rebuild_request(self, bucket: SchedulerBucket) -> None:
        """Forget that a rebuild task is queued for ``bucket``.

        For a task that was never sent, or that gave up: the next
        :meth:`request_rebuild` returns True again. Requests stay counted, so the next
        run still rebuilds. Called wrongly, it costs one extra task, which skips.
        """
        key = self._w.keys.rebuild_state(bucket)
        with redis_errors(f"abandon_rebuild_request {bucket}", key):
            self._w.client.hdel(key, "queued")

    def forget(self, bucket: SchedulerBucket) -> None:
        """Drop a retired bucket's requests."""
        key = self._w.keys.rebuild_state(bucket)
        with redis_errors(f"retire_bucket {bucket}", key):
            self._w.client.delete(key)
        with redis_errors(f"retire_bucket {bucket}", self._w.keys.rebuild_leases):
            self._w.client.zrem(self._w.keys.rebuild_leases, str(bucket))

    def _note_lease(self, bucket: SchedulerBucket, deadline: int) -> None:
        # After the bucket's state, never before: a reclaim that finds the bucket
        # settled removes its entry only when no later deadline was noted meanwhile.
        leases = self._w.keys.rebuild_leases
        with redis_errors(f"request_rebuild {bucket}", leases):
            self._w.client.zadd(leases, {str(bucket): deadline})

    def _release(self, name: str, seen: float) -> None:
        leases = self._w.keys.rebuild_leases
        with redis_errors("release_rebuild_lease", leases):
            self._w.scripts["release_rebuild_lease"](keys=[leases], args=[name, int(seen)])
