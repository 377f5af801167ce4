"""Keys of the wrong Redis type: found, named, and deleted so the next write recreates
them. Every other operation fails on such a key with WRONGTYPE (:class:`CorruptKey`).

The one exception to "each store writes only its own keys": deleting a key that no
store could have written is no store's write."""

from __future__ import annotations

from cache.base import Wiring, redis_errors, text
from cache.models import SchedulerBucket


class Repair:
    def __init__(self, wiring: Wiring) -> None:
        self._w = wiring

    def _typed_keys(self, bucket: SchedulerBucket | None) -> list[dict[str, str]]:
        """The keys to check and their types, one group per Cluster slot: the shared
        stores, and the bucket's own keys."""
        k = self._w.keys
        shared = {
            k.accounts: "hash",
            k.revisions: "hash",
            k.digests: "hash",
            k.last_used: "hash",
            k.last_used_pending: "hash",
            k.registry: "set",
            k.stats: "hash",
            k.outbox_watermark: "string",
            k.outbox_gaps: "zset",
            k.epoch: "string",
        }
        if bucket is None:
            return [shared]
        own = {
            k.meta(bucket): "hash",
            k.version_counter(bucket): "string",
            k.lock(bucket): "string",
            k.rebuild_state(bucket): "hash",
        }
        return [shared, own]

    def wrong_type_keys(
        self, bucket: SchedulerBucket | None = None, *, repair: bool = False
    ) -> dict[str, str]:
        """Keys (the shared ones, and ``bucket``'s) that hold the wrong Redis type, with
        the type each holds; with ``repair`` they are deleted in the same step."""
        wrong: dict[str, str] = {}
        for typed in self._typed_keys(bucket):
            with redis_errors("wrong_type_keys", next(iter(typed))):
                found = self._w.scripts["repair_types"](
                    keys=list(typed), args=["1" if repair else "0", *typed.values()]
                )
            wrong |= {text(found[i]): text(found[i + 1]) for i in range(0, len(found), 2)}
        return wrong
