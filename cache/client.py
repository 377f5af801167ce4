"""The Redis scheduling cache: one object over the stores it is made of.

:class:`RedisSchedulerCache` holds no Redis logic: every method is one store's (or, for
retiring a bucket, three stores' in turn). A process that needs only a part builds that
store alone: a web process reads with :class:`cache.reader.SnapshotReader`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Self

import redis

from cache.accounts import AccountStore
from cache.base import Clock, Wiring, connect_url, utc_now
from cache.codec import DEFAULT_CACHED_CREDENTIALS
from cache.errors import CorruptPayload
from cache.keys import SNAPSHOT_GRACE_SECONDS
from cache.lastuse import LastUseStore
from cache.locks import Locks
from cache.models import Account, BucketInfo, SchedulerBucket
from cache.outbox import OutboxPosition
from cache.patches import AccountPatcher, Reach
from cache.placements import AccountPlacer, Placement
from cache.reader import SnapshotReader
from cache.reads import SnapshotRead
from cache.rebuilds import RebuildRequests
from cache.registry import BucketRegistry
from cache.repair import Repair
from cache.rowread import HeldRows, RowRead
from cache.snapshots import SnapshotWriter
from cache.stats import Stats


class RedisSchedulerCache:
    """Versioned snapshots of each bucket's schedulable accounts, in Redis, and what the
    background work coordinates with. See :class:`cache.snapshots.SnapshotWriter` for
    why the newest read wins, and docs/write-path.md for the order of a write's steps.

    Readers get the active version, uncached, with :meth:`get_snapshot`; web processes
    read through a :class:`cache.near.NearCache`, which serves from memory.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "sched",
        snapshot_grace_seconds: int = SNAPSHOT_GRACE_SECONDS,
        cached_credentials: Iterable[str] = DEFAULT_CACHED_CREDENTIALS,
        clock: Clock = utc_now,
    ) -> None:
        w = Wiring.build(
            client,
            prefix=prefix,
            snapshot_grace_seconds=snapshot_grace_seconds,
            cached_credentials=cached_credentials,
            clock=clock,
        )
        self.client, self.keys, self.codec, self.clock = w.client, w.keys, w.codec, w.clock
        self.reader = SnapshotReader(client, keys=w.keys, codec=w.codec, scripts=w.scripts)
        self.accounts = AccountStore(w, AccountPatcher(w))
        self.placer = AccountPlacer(w)
        self.last_use = LastUseStore(w)
        self.registry = BucketRegistry(w)
        self.snapshots = SnapshotWriter(w, self.accounts, self.last_use, self.registry)
        self.locks = Locks(w)
        self.outbox = OutboxPosition(w)
        self.rebuilds = RebuildRequests(w)
        self.figures = Stats(w)
        self.repair = Repair(w)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Self:
        """A cache over a new client for ``url``, in any topology :func:`cache.base.
        connect_url` takes (``socket_timeout``, ``client_options``, ``cluster``,
        ``sentinel_master``, ``sentinel_password``); other ``kwargs`` go to the cache."""
        options = ("socket_timeout", "client_options", "cluster", "sentinel_master")
        connecting = {k: kwargs.pop(k) for k in (*options, "sentinel_password") if k in kwargs}
        return cls(connect_url(url, **connecting), **kwargs)

    # -- snapshots: reading ----------------------------------------------------------
    def get_snapshot(self, bucket: SchedulerBucket) -> list[Account] | None:
        return self.reader.get_snapshot(bucket)

    def read_snapshot(self, bucket: SchedulerBucket) -> SnapshotRead | None:
        return self.reader.read_snapshot(bucket)

    def read_rows(self, bucket: SchedulerBucket, held: HeldRows) -> RowRead | None:
        return self.reader.read_rows(bucket, held)

    def bucket_info(self, bucket: SchedulerBucket) -> BucketInfo:
        return self.reader.bucket_info(bucket)

    # -- snapshots: writing ----------------------------------------------------------
    def reserve_version(self, bucket: SchedulerBucket) -> int:
        return self.snapshots.reserve_version(bucket)

    def set_snapshot(
        self,
        bucket: SchedulerBucket,
        accounts: Iterable[Account],
        version: int | None = None,
        *,
        rebuild_ms: float | None = None,
        belongs: Callable[[Account], bool] | None = None,
    ) -> bool:
        return self.snapshots.set_snapshot(
            bucket, accounts, version, rebuild_ms=rebuild_ms, belongs=belongs
        )

    # -- accounts --------------------------------------------------------------------
    def get_account(self, account_id: int) -> Account | None:
        return self.accounts.get_account(account_id)

    def set_account(
        self, account: Account, belongs: Collection[SchedulerBucket] | None = None
    ) -> bool:
        return self.accounts.set_account(account, belongs)

    def change_account(
        self, account: Account, belongs: Collection[SchedulerBucket] | None = None
    ) -> Reach | None:
        return self.accounts.change_account(account, belongs)

    def place_account(
        self, bucket: SchedulerBucket, account: Account, followers: Sequence[int]
    ) -> Placement:
        return self.placer.place(bucket, account, followers)

    def accounts_behind(self, accounts: list[Account]) -> list[Account]:
        return self.accounts.behind(accounts)

    def delete_account(self, account_id: int, revision: int | None = None) -> bool:
        return self.accounts.delete_account(account_id, revision)

    def forget_corrupt_payload(self, exc: CorruptPayload) -> bool:
        return self.accounts.forget_corrupt_payload(exc)

    # -- last use --------------------------------------------------------------------
    def update_last_used(
        self, updates: Mapping[int, datetime], *, record_pending: bool = False
    ) -> int:
        return self.last_use.update_last_used(updates, record_pending=record_pending)

    def last_used_of(self, account_ids: Sequence[int]) -> dict[int, datetime]:
        return self.last_use.last_used_of(account_ids)

    def pending_last_used(self) -> dict[int, datetime]:
        return self.last_use.pending_last_used()

    def ack_pending_last_used(self, written: Mapping[int, datetime]) -> int:
        return self.last_use.ack_pending_last_used(written)

    # -- locks -----------------------------------------------------------------------
    def try_lock_bucket(
        self, bucket: SchedulerBucket, ttl_seconds: float, token: str | None = None
    ) -> str | None:
        return self.locks.try_lock_bucket(bucket, ttl_seconds, token)

    def unlock_bucket(self, bucket: SchedulerBucket, token: str) -> bool:
        return self.locks.unlock_bucket(bucket, token)

    def try_lock(self, name: str, ttl_seconds: float, token: str | None = None) -> str | None:
        return self.locks.try_lock(name, ttl_seconds, token)

    def unlock(self, name: str, token: str) -> bool:
        return self.locks.unlock(name, token)

    # -- registry --------------------------------------------------------------------
    def list_buckets(self) -> list[SchedulerBucket]:
        return self.registry.list_buckets()

    def retire_bucket(self, bucket: SchedulerBucket) -> bool:
        """Stop serving and refreshing ``bucket``; True when it was known."""
        self.rebuilds.forget(bucket)
        active = self.snapshots.retire(bucket)
        return self.registry.remove(bucket) or active

    # -- outbox and epoch ------------------------------------------------------------
    def get_outbox_watermark(self) -> int:
        return self.outbox.get_outbox_watermark()

    def set_outbox_watermark(self, event_id: int) -> bool:
        return self.outbox.advance_outbox(event_id)

    def advance_outbox(
        self, event_id: int, *, new_gaps: Iterable[int] = (), resolved_gaps: Iterable[int] = ()
    ) -> bool:
        return self.outbox.advance_outbox(event_id, new_gaps=new_gaps, resolved_gaps=resolved_gaps)

    def outbox_gaps(self) -> dict[int, datetime]:
        return self.outbox.outbox_gaps()

    def epoch(self) -> str | None:
        return self.outbox.epoch()

    def reestablish(self, seen: str | None, watermark: int, gaps: Iterable[int] = ()) -> bool:
        return self.outbox.reestablish(seen, watermark, gaps)

    # -- coalesced rebuild requests --------------------------------------------------
    def request_rebuild(self, bucket: SchedulerBucket) -> bool:
        return self.rebuilds.request_rebuild(bucket)

    def begin_rebuild(
        self, bucket: SchedulerBucket, *, force: bool = False, lease_seconds: float = 60.0
    ) -> int | None:
        return self.rebuilds.begin_rebuild(bucket, force=force, lease_seconds=lease_seconds)

    def extend_rebuild_lease(self, bucket: SchedulerBucket, countdown: float) -> None:
        self.rebuilds.extend_lease(bucket, countdown)

    def reclaim_rebuilds(self, send: Callable[[SchedulerBucket], None]) -> int:
        return self.rebuilds.reclaim_expired(send)

    def finish_rebuild(self, bucket: SchedulerBucket, generation: int) -> int:
        return self.rebuilds.finish_rebuild(bucket, generation)

    def abandon_rebuild_request(self, bucket: SchedulerBucket) -> None:
        self.rebuilds.abandon_rebuild_request(bucket)

    # -- figures and health ----------------------------------------------------------
    def record_stats(
        self, counters: Mapping[str, int] | None = None, values: Mapping[str, str] | None = None
    ) -> None:
        self.figures.record_stats(counters, values)

    def stats(self) -> dict[str, str]:
        return self.figures.stats()

    def ping(self) -> None:
        self.figures.ping()

    def wrong_type_keys(
        self, bucket: SchedulerBucket | None = None, *, repair: bool = False
    ) -> dict[str, str]:
        return self.repair.wrong_type_keys(bucket, repair=repair)
