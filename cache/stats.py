"""Figures of the background work, for status views."""

from __future__ import annotations

from collections.abc import Mapping

from cache.base import Wiring, redis_errors, text


class Stats:
    """The only writer of the stats hash."""

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def record_stats(
        self, counters: Mapping[str, int] | None = None, values: Mapping[str, str] | None = None
    ) -> None:
        """Add to named counters and set named values, in one round trip."""
        key = self._w.keys.stats
        with redis_errors("record_stats", key):
            pipe = self._w.client.pipeline(transaction=False)
            for name, amount in (counters or {}).items():
                pipe.hincrby(key, name, amount)
            for name, value in (values or {}).items():
                pipe.hset(key, name, value)
            pipe.execute()

    def stats(self) -> dict[str, str]:
        """Every counter and value recorded with :meth:`record_stats`."""
        with redis_errors("stats", self._w.keys.stats):
            held = self._w.client.hgetall(self._w.keys.stats)
        return {text(k): text(v) for k, v in held.items()}

    def ping(self) -> None:
        """Raise :class:`CacheUnavailable` unless Redis answers."""
        with redis_errors("ping"):
            self._w.client.ping()
