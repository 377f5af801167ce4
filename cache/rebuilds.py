"""Coalesced rebuild requests: a burst of requests for a bucket costs one or two
rebuilds, and a request that arrives during a rebuild is never lost."""

from __future__ import annotations

from cache.base import Wiring, redis_errors
from cache.keys import REBUILD_STATE_TTL_SECONDS
from cache.models import SchedulerBucket


class RebuildRequests:
    """The only writer of the buckets' rebuild request state."""

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def request_rebuild(self, bucket: SchedulerBucket) -> bool:
        """Note a rebuild request; True when the caller must enqueue a rebuild task."""
        key = self._w.keys.rebuild_state(bucket)
        with redis_errors(f"request_rebuild {bucket}", key):
            return bool(
                self._w.scripts["request_rebuild"](keys=[key], args=[REBUILD_STATE_TTL_SECONDS])
            )

    def begin_rebuild(self, bucket: SchedulerBucket, *, force: bool = False) -> int | None:
        """Call holding the lock, before reading the source.

        Returns the request generation this run covers, or None when every request so
        far is covered by a finished run already (skip the rebuild). Requests from now
        on make :meth:`request_rebuild` return True again.
        """
        key = self._w.keys.rebuild_state(bucket)
        with redis_errors(f"begin_rebuild {bucket}", key):
            generation = int(
                self._w.scripts["begin_rebuild"](
                    keys=[key], args=["1" if force else "0", REBUILD_STATE_TTL_SECONDS]
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
