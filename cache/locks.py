"""Locks with tokens: a bucket's rebuild lock and named locks of singleton jobs."""

from __future__ import annotations

import secrets

from cache.base import Wiring, redis_errors
from cache.models import SchedulerBucket, validate_token


class Locks:
    """The only writer of lock keys; a lock is released only by its token's holder."""

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def try_lock_bucket(
        self, bucket: SchedulerBucket, ttl_seconds: float, token: str | None = None
    ) -> str | None:
        """Take the bucket's rebuild lock: a token when taken, None when busy.

        Passing the token of an earlier hold renews it (a redelivered task whose first
        run was killed gets its own lock back at once).
        """
        return self._lock(self._w.keys.lock(bucket), ttl_seconds, token, f"lock {bucket}")

    def try_lock(self, name: str, ttl_seconds: float, token: str | None = None) -> str | None:
        """Take a named lock for a singleton job; same contract as :meth:`try_lock_bucket`."""
        validate_token(name, "lock name")
        return self._lock(self._w.keys.named_lock(name), ttl_seconds, token, f"lock {name}")

    def unlock(self, name: str, token: str) -> bool:
        """Release a named lock if ``token`` still holds it."""
        validate_token(name, "lock name")
        return self._unlock(self._w.keys.named_lock(name), token, f"unlock {name}")

    def unlock_bucket(self, bucket: SchedulerBucket, token: str) -> bool:
        """Release the lock if ``token`` still holds it; False when it had moved on."""
        return self._unlock(self._w.keys.lock(bucket), token, f"unlock {bucket}")

    def _lock(self, key: str, ttl_seconds: float, token: str | None, action: str) -> str | None:
        if ttl_seconds <= 0:
            raise ValueError(f"lock ttl must be > 0 seconds, got {ttl_seconds}")
        token = token or secrets.token_hex(16)
        with redis_errors(action, key):
            held = self._w.scripts["lock"](keys=[key], args=[token, int(ttl_seconds * 1000)])
        return token if held else None

    def _unlock(self, key: str, token: str, action: str) -> bool:
        with redis_errors(action, key):
            return bool(self._w.scripts["unlock"](keys=[key], args=[token]))
