"""The bucket registry: every bucket that has had a snapshot, which refreshes rebuild."""

from __future__ import annotations

import logging

from cache.base import Wiring, redis_errors, text
from cache.errors import CacheError
from cache.models import SchedulerBucket

logger = logging.getLogger(__name__)


class BucketRegistry:
    """The only writer of the registry set."""

    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def add(self, bucket: SchedulerBucket) -> None:
        with redis_errors(f"register {bucket}", self._w.keys.registry):
            self._w.client.sadd(self._w.keys.registry, str(bucket))

    def remove(self, bucket: SchedulerBucket) -> bool:
        """True when the bucket was registered."""
        with redis_errors(f"retire_bucket {bucket}", self._w.keys.registry):
            return bool(self._w.client.srem(self._w.keys.registry, str(bucket)))

    def list_buckets(self) -> list[SchedulerBucket]:
        """Every registered bucket, sorted; malformed entries are logged and skipped."""
        with redis_errors("list_buckets", self._w.keys.registry):
            members = self._w.client.smembers(self._w.keys.registry)
        buckets: list[SchedulerBucket] = []
        for member in members:
            try:
                buckets.append(SchedulerBucket.parse(text(member)))
            except CacheError as exc:
                logger.warning("skipping registry entry: %s", exc)
        return sorted(buckets, key=lambda b: (b.group_id, b.platform, b.mode.value))
