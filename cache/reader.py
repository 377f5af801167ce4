"""The read side of the snapshots, on its own: what a web process needs and no more."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

import redis
from redis.commands.core import Script

from cache.base import redis_errors
from cache.codec import DEFAULT_CACHED_CREDENTIALS, AccountCodec, from_ms
from cache.keys import READ_GROUP, KeySpace
from cache.models import Account, BucketInfo, SchedulerBucket
from cache.reads import Expired, Moved, ReadPlan, SnapshotRead, VersionHints
from cache.rowread import HeldRows, RowPlan, RowRead
from cache.scripts import Scripts

logger = logging.getLogger(__name__)

# A version replaced and expired while being read is read again, this many times.
READ_ATTEMPTS = 3
# A read that expected another version than the active one asks again naming it; only
# writers activating faster than a round trip make it ask more than once.
MOVED_ATTEMPTS = 32


class SnapshotReader:
    """Reads buckets' active snapshots; writes nothing.

    Build one over a client for a process that only reads (``SnapshotReader(client)``),
    or share the writer's parts (:class:`cache.client.RedisSchedulerCache` does).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "sched",
        cached_credentials: Iterable[str] = DEFAULT_CACHED_CREDENTIALS,
        keys: KeySpace | None = None,
        codec: AccountCodec | None = None,
        scripts: Scripts[Script] | None = None,
    ) -> None:
        if client.get_encoder().decode_responses:
            raise ValueError("the cache needs a client with decode_responses=False (bytes)")
        self.client = client
        self.keys = keys or KeySpace(prefix)
        self.codec = codec or AccountCodec(cached_credentials)
        self.scripts = scripts or Scripts(client)
        self.hints = VersionHints()

    def get_snapshot(self, bucket: SchedulerBucket) -> list[Account] | None:
        """The active snapshot's accounts in order, or None on a miss.

        A miss: no active version, an empty snapshot, a missing account payload, or a
        corrupt one (logged). Each account's ``last_used_at`` is the cached last use.
        Every account comes from one version (or is a newer revision put into it).
        """
        read = self.read_snapshot(bucket)
        return read.accounts if read is not None and read.accounts else None

    def read_snapshot(self, bucket: SchedulerBucket) -> SnapshotRead | None:
        """The active version with its number and ``gen``; None when there is none, or
        an account payload is missing or corrupt. An empty version reads as no accounts.
        """
        read = self._read(ReadPlan, bucket)
        assert read is None or isinstance(read, SnapshotRead)
        return read

    def read_rows(self, bucket: SchedulerBucket, held: HeldRows) -> RowRead | None:
        """As :meth:`read_snapshot`, for a near cache: rows, no account decoded, those
        ``held`` has for the same entry reused, their payloads not fetched."""
        read = self._read(partial(RowPlan, held=held), bucket)
        assert read is None or isinstance(read, RowRead)
        return read

    def _read(
        self, plan_of: Callable[..., ReadPlan], bucket: SchedulerBucket
    ) -> SnapshotRead | RowRead | None:
        with redis_errors(f"get_snapshot {bucket}", self.keys.meta(bucket)):
            expired = moved = 0
            while expired < READ_ATTEMPTS and moved < MOVED_ATTEMPTS:
                try:
                    plan = plan_of(self.keys, self.codec, bucket, hints=self.hints)
                    return self._read_once(plan)
                except Moved as exc:
                    moved += 1
                    logger.debug("reading again: %s", exc)
                except Expired as exc:
                    expired += 1
                    logger.info("snapshot %s expired mid-read; reading again", exc)
        return None

    def _read_once(self, plan: ReadPlan) -> SnapshotRead | RowRead | None:
        keys, args = plan.first_call()
        if not plan.absorb_first(self.scripts["read_snapshot"](keys=keys, args=args)):
            return None
        ranges = plan.rest_ranges()
        if ranges:
            pipe = self.client.pipeline(transaction=False)
            for key, start, end in ranges:
                pipe.lrange(key, start, end)
            # A one-account change in place since the first chunk (cache/placements.py:
            # an insert or a move shifts the ids after it) would make these offsets read
            # one id twice and miss the last: every change moves gen, so read again.
            pipe.hget(self.keys.meta(plan.bucket), "gen")
            *parts, gen = pipe.execute()
            if int(gen or 0) != plan.gen:
                raise Expired(f"bucket {plan.bucket} v{plan.version} (changed mid-read)")
            pipe = self._hmgets(plan.absorb_rest(parts))
            plan.absorb_entries(pipe.execute())
        payloads, uses = plan.fetches()
        if isinstance(plan, RowPlan):
            plan.absorb_uses(self._hmgets(uses).execute())
            for start in range(0, len(payloads), READ_GROUP):
                group = payloads[start : start + READ_GROUP]
                plan.absorb_payloads(self._hmgets(group).execute())
            return plan.finish_rows()
        pipe = self._hmgets(payloads + uses)
        replies = pipe.execute()
        return plan.finish(replies[: len(payloads)], replies[len(payloads) :])

    def _hmgets(self, calls: list[tuple[str, list[bytes]]]) -> Any:
        pipe = self.client.pipeline(transaction=False)
        for key, fields in calls:
            pipe.hmget(key, fields)
        return pipe

    def bucket_info(self, bucket: SchedulerBucket) -> BucketInfo:
        """Active version, size, age and last rebuild time of one bucket."""
        with redis_errors(f"bucket_info {bucket}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hmget(self.keys.meta(bucket), ["active", "count", "built_at", "rebuild_ms"])
            pipe.get(self.keys.version_counter(bucket))
            (active, count, built_at, rebuild_ms), reserved = pipe.execute()
        return BucketInfo(
            bucket=bucket,
            active_version=int(active) if active is not None else None,
            reserved_version=int(reserved or 0),
            account_count=int(count or 0),
            built_at=from_ms(built_at) if built_at is not None else None,
            rebuild_ms=float(rebuild_ms) if rebuild_ms is not None else None,
        )
