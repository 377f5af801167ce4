"""The Redis scheduling cache: snapshots, accounts and their last use."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cache.base import raw, redis_errors
from cache.codec import from_ms, to_ms
from cache.coordination import CoordinationMixin
from cache.errors import CorruptPayload, brief
from cache.models import Account, BucketInfo, SchedulerBucket, check_account_id
from cache.reads import Expired, ReadPlan, SnapshotRead
from cache.repair import RepairMixin
from cache.writes import WriteMixin

logger = logging.getLogger(__name__)

# A version replaced and expired while being read is read again, this many times.
READ_ATTEMPTS = 3


class RedisSchedulerCache(WriteMixin, CoordinationMixin, RepairMixin):
    """Versioned snapshots of each bucket's schedulable accounts, in Redis.

    Writers reserve a version *before* they read the source and activate it with a
    compare-and-set, so the snapshot built from the newest read wins::

        rebuild A: reserve v5 .. read (slow, old data) ............ set v5 -> refused
        rebuild B:      reserve v6 .. read (new data) .. set v6 -> active

    Readers get the active version, uncached, with :meth:`get_snapshot`; web processes
    read through a :class:`cache.near.NearCache`, which serves from memory.
    """

    # -- snapshots -------------------------------------------------------------------
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
        with redis_errors(f"get_snapshot {bucket}"):
            for _ in range(READ_ATTEMPTS):
                try:
                    return self._read_once(ReadPlan(self.keys, self.codec, bucket))
                except Expired as exc:
                    logger.info("snapshot %s expired mid-read; reading again", exc)
        return None

    def _read_once(self, plan: ReadPlan) -> SnapshotRead | None:
        keys, args = plan.first_call()
        if not plan.absorb_first(self._scripts["read_snapshot"](keys=keys, args=args)):
            return None
        ranges = plan.rest_ranges()
        if ranges:
            pipe = self.client.pipeline(transaction=False)
            for key, start, end in ranges:
                pipe.lrange(key, start, end)
            pipe = self._hmgets(plan.absorb_rest(pipe.execute()))
            plan.absorb_entries(pipe.execute())
        payloads, uses = plan.fetches()
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

    # -- accounts --------------------------------------------------------------------
    def get_account(self, account_id: int) -> Account | None:
        """The cached account, or None; raise :class:`CorruptPayload` if undecodable."""
        with redis_errors(f"get_account {account_id}"):
            pipe = self.client.pipeline(transaction=False)
            pipe.hget(self.keys.accounts, account_id)
            pipe.hget(self.keys.last_used, account_id)
            payload, used = pipe.execute()
        if payload is None:
            return None
        try:
            return self.codec.decode(account_id, raw(payload), used and raw(used))
        except CorruptPayload as exc:
            self.forget_corrupt_payload(exc)
            raise

    def forget_corrupt_payload(self, exc: CorruptPayload) -> bool:
        """Make the next write of the account in ``exc`` replace its undecodable payload
        (see cache/lua/forget_payload.lua); True when it will."""
        if exc.account_id is None or exc.payload is None:
            return False
        with redis_errors(f"forget_corrupt_payload {exc.account_id}"):
            return bool(
                self._scripts["forget_payload"](
                    keys=[self.keys.accounts, self.keys.digests],
                    args=[exc.account_id, exc.payload],
                )
            )

    # -- last use (writing it: WriteMixin.update_last_used) ---------------------------
    def pending_last_used(self) -> dict[int, datetime]:
        """Last-use times not yet acknowledged as written to the source database.

        An entry this package does not write (an id out of range, say from an older
        version, or a time that is not integer ms) is logged and deleted: kept, it
        would fail every write of the others to the database.
        """
        with redis_errors("pending_last_used"):
            found = self.client.hgetall(self.keys.last_used_pending)
        pending: dict[int, datetime] = {}
        malformed: list[bytes | str] = []
        for key, value in found.items():
            try:
                pending[check_account_id(key)] = from_ms(value)
            except (ValueError, OverflowError, OSError):
                malformed.append(key)
        if malformed:
            logger.error(
                "dropping %d malformed entries of %s: %s",
                len(malformed),
                self.keys.last_used_pending,
                brief({k: found[k] for k in malformed[:5]}),
            )
            with redis_errors("pending_last_used"):
                self.client.hdel(self.keys.last_used_pending, *malformed)
        return pending

    def ack_pending_last_used(self, written: Mapping[int, datetime]) -> int:
        """Drop pending times the database now has; newer pending times stay."""
        if not written:
            return 0
        args: list[Any] = []
        for account_id, used in written.items():
            args += (int(account_id), to_ms(used))
        with redis_errors("ack_pending_last_used"):
            return int(
                self._scripts["ack_last_used"](keys=[self.keys.last_used_pending], args=args)
            )
