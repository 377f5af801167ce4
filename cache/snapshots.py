"""Writing snapshots: staged in bounded chunks, activated in one step; the only writer
of a bucket's meta hash, version counter and versions (the account patcher aside,
which puts one changed account into a version).

Every script touches one Cluster slot: a snapshot's versions live under the bucket's
hash tag, the account store under the shared one. What spans both is done in steps
whose order keeps the guarantees (see docs/write-path.md and :meth:`set_snapshot`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from cache.accounts import AccountStore, Keeps, Staged
from cache.base import Wiring, redis_errors, text
from cache.codec import to_ms
from cache.errors import CacheError, VersionNotReserved
from cache.keys import INDEX_CHUNK, READ_CHUNK, STAGE_TTL_SECONDS, WRITE_CHUNK
from cache.lastuse import LastUseStore
from cache.models import Account, SchedulerBucket
from cache.registry import BucketRegistry
from cache.replies import Retire, Stage

logger = logging.getLogger(__name__)

# An activation or retirement that finds another active version than it named asks
# again naming it; only writers racing on one bucket make it ask more than once.
MOVED_ATTEMPTS = 8


class SnapshotWriter:
    """Versioned snapshots of each bucket's schedulable accounts.

    Writers reserve a version *before* they read the source and activate it with a
    compare-and-set, so the snapshot built from the newest read wins::

        rebuild A: reserve v5 .. read (slow, old data) ............ set v5 -> refused
        rebuild B:      reserve v6 .. read (new data) .. set v6 -> active
    """

    def __init__(
        self,
        wiring: Wiring,
        accounts: AccountStore,
        last_use: LastUseStore,
        registry: BucketRegistry,
    ) -> None:
        self._w = wiring
        self._accounts = accounts
        self._last_use = last_use
        self._registry = registry

    def reserve_version(self, bucket: SchedulerBucket) -> int:
        """A new version number for ``bucket``; call it before reading the source."""
        key = self._w.keys.version_counter(bucket)
        with redis_errors(f"reserve_version {bucket}", key):
            return int(self._w.client.incr(key))

    def set_snapshot(
        self,
        bucket: SchedulerBucket,
        accounts: Iterable[Account],
        version: int | None = None,
        *,
        rebuild_ms: float | None = None,
        belongs: Callable[[Account], bool] | None = None,
    ) -> bool:
        """Write ``accounts`` as ``version`` and activate it if nothing newer is active.

        Returns True when it became active. Without ``version`` one is reserved now,
        which is only right when ``accounts`` were read after this call began: a
        rebuilder should call :meth:`reserve_version` before it reads the source.

        The steps, and why in this order (docs/write-path.md has the timeline)::

            1. accounts the store holds newer (or deleted) revisions of take the
               store's payload: a payload never replaces a newer one; or a removal,
               where ``belongs`` (the source's rules) says the newer one has left
               the bucket since the read
            2. the bucket joins the registry (refreshes rebuild it from now on)
            3. version N is staged in chunks; its keys expire unless activated
            4. N is indexed for each account; changes stored since step 1 are put
               into N (staged: no push); changes from now on reach N through the index
            5. one compare-and-set activates N, with one push; or the writer lost: it
               unlinks what it staged, and readers saw nothing of it
            6. the winner brings the store up to its payloads (nothing readers see)
        """
        if version is None:
            version = self.reserve_version(bucket)
        if version < 1:
            raise VersionNotReserved(f"bucket {bucket}: version {version} was never reserved")
        staged, uses = self._encode_all(bucket, accounts)
        keeps = belongs
        with redis_errors(f"set_snapshot {bucket} v{version}", self._w.keys.meta(bucket)):
            self._accounts.take_newer(staged, keeps)
            self._registry.add(bucket)
            status, other, active = self._stage(bucket, version, staged)
            if status == Stage.DONE:
                listed = self._listed(bucket, active)
                fresh = [s for s in staged if s.id not in listed]
                kept = [s for s in staged if s.id in listed]
                newer = self._accounts.index(bucket, version, fresh, keeps)
                newer += self._accounts.newer(kept, keeps)
                self._accounts.patch_version(bucket, version, newer)
                status, other = self._activate(bucket, version, len(staged), active, rebuild_ms)
                if status == Stage.DONE:
                    self._settle(bucket, version, staged, kept, listed, other, active, keeps)
            if status not in (Stage.DONE, Stage.TAKEN):
                self._w.scripts["drop_staged"](
                    keys=[self._w.keys.meta(bucket), *self._version_keys(bucket, version)],
                    args=[version],
                )
            if status == Stage.UNRESERVED:
                raise VersionNotReserved(
                    f"bucket {bucket}: version {version} was never reserved "
                    f"(last reserved: {other})"
                )
            if status == Stage.INCOMPLETE:
                raise CacheError(f"bucket {bucket}: staged v{version} expired before activation")
            if status == Stage.TAKEN:
                logger.warning(
                    "bucket %s: v%s is another writer's (Redis lost its state)", bucket, version
                )
                return False
            if status == Stage.STALE:
                logger.info("bucket %s: v%s not activated, v%s is newer", bucket, version, other)
                return False
        # No version before this one: a new bucket, or a Redis that lost its state.
        self._last_use.seed(uses, everything=other == 0)
        return True

    def retire(self, bucket: SchedulerBucket) -> bool:
        """Stop serving the bucket: readers miss, its last version expires after the
        grace period; True when it had an active version."""
        k = self._w.keys
        with redis_errors(f"retire_bucket {bucket}", k.meta(bucket)):
            expected = int(self._w.client.hget(k.meta(bucket), "active") or 0)
            for _ in range(MOVED_ATTEMPTS):
                status, active = self._w.scripts["retire_bucket"](
                    keys=[k.meta(bucket), *self._version_keys(bucket, expected)],
                    args=[expected, self._w.grace_seconds, k.changes_channel, str(bucket)],
                )
                if status != Retire.MOVED:
                    return bool(status == Retire.RETIRED)
                expected = int(active)
        raise CacheError(f"bucket {bucket}: versions kept moving while retiring it")

    def _listed(self, bucket: SchedulerBucket, version: int) -> set[str]:
        """The ids ``version`` of ``bucket`` lists (none for version 0)."""
        if version == 0:
            return set()
        key = self._w.keys.snapshot(bucket, version)
        total = int(self._w.client.llen(key))
        pipe = self._w.client.pipeline(transaction=False)
        for first in range(0, total, READ_CHUNK):
            pipe.lrange(key, first, first + READ_CHUNK - 1)
        return {text(i) for part in pipe.execute() for i in part} if total else set()

    def _settle(
        self,
        bucket: SchedulerBucket,
        version: int,
        staged: list[Staged],
        kept: list[Staged],
        listed: set[str],
        replaced: int,
        was: int,
        keeps: Keeps | None,
    ) -> None:
        """After activating ``version``: the index and the store catch up with it.

        Only accounts new to the bucket were indexed: the others are indexed for the
        version ``was`` active when staging began. If another version was activated
        meanwhile (``replaced``), a change may have dropped those entries: index them
        again. Otherwise drop the entries of accounts ``version`` no longer lists.
        Last, a change stored after the check before activation reached the replaced
        version and not this one: the store names it, and it is put in now (one push).
        """
        if replaced != was:
            self._accounts.index(bucket, version, kept)
        elif listed:
            self._drop_entries(bucket, version, listed - {s.id for s in staged})
        late = self._accounts.store(staged, keeps)
        self._accounts.patch_version(bucket, version, late)

    def _drop_entries(self, bucket: SchedulerBucket, version: int, ids: set[str]) -> None:
        k = self._w.keys
        gone = sorted(ids)
        calls: list[tuple[list[str], list[Any]]] = [
            (
                [k.account_buckets(i) for i in gone[first : first + INDEX_CHUNK]],
                [str(bucket), version],
            )
            for first in range(0, len(gone), INDEX_CHUNK)
        ]
        if calls:
            self._w.run("unindex_accounts", calls)

    def _encode_all(
        self, bucket: SchedulerBucket, accounts: Iterable[Account]
    ) -> tuple[list[Staged], dict[int, datetime]]:
        encode = self._w.codec.encode
        staged: list[Staged] = []
        uses: dict[int, datetime] = {}
        seen: set[int] = set()
        for account in accounts:
            if account.id in seen:
                raise ValueError(f"bucket {bucket}: account {account.id} appears twice")
            seen.add(account.id)
            payload, payload_digest = encode(account)
            revision = "-1" if account.revision is None else str(account.revision)
            staged.append(Staged(str(account.id), revision, payload_digest, payload))
            if account.last_used_at is not None:
                uses[account.id] = account.last_used_at
        return staged, uses

    def _version_keys(self, bucket: SchedulerBucket, version: int) -> list[str]:
        k = self._w.keys
        return [
            k.snapshot(bucket, version),
            k.payloads(bucket, version),
            k.entries(bucket, version),
        ]

    def _stage(
        self, bucket: SchedulerBucket, version: int, staged: list[Staged]
    ) -> tuple[int, int, int]:
        """Step 3: (status, other, active version) of the last chunk, or the first that
        failed."""
        k = self._w.keys
        if not staged:
            return Stage.DONE, 0, int(self._w.client.hget(k.meta(bucket), "active") or 0)
        keys = [k.meta(bucket), k.version_counter(bucket), *self._version_keys(bucket, version)]
        calls = []
        for first in range(0, len(staged), WRITE_CHUNK):
            part = staged[first : first + WRITE_CHUNK]
            args: list[Any] = [
                version,
                STAGE_TTL_SECONDS,
                first,
                ",".join(s.id for s in part),
                ",".join(f"{s.digest}/{s.revision}" for s in part),
                *(s.payload for s in part),
            ]
            calls.append((keys, args))
        replies = self._w.run("stage_snapshot", calls)
        reply = next((r for r in replies if r[0] != Stage.DONE), replies[-1])
        return int(reply[0]), int(reply[1]), int(reply[2]) if len(reply) > 2 else 0

    def _activate(
        self,
        bucket: SchedulerBucket,
        version: int,
        count: int,
        expected: int,
        rebuild_ms: float | None,
    ) -> tuple[int, int]:
        """Step 5: the compare-and-set, of constant cost. It names the version it
        replaces (to expire it); if another is active by then, it asks again."""
        for _ in range(MOVED_ATTEMPTS):
            status, other = self._activation(bucket, version, count, expected, rebuild_ms)
            if status != Stage.MOVED:
                return status, other
            expected = other
        raise CacheError(f"bucket {bucket}: versions kept moving while activating v{version}")

    def _activation(
        self,
        bucket: SchedulerBucket,
        version: int,
        count: int,
        expected: int,
        rebuild_ms: float | None,
    ) -> tuple[int, int]:
        k = self._w.keys
        reply = self._w.scripts["activate_snapshot"](
            keys=[
                k.meta(bucket),
                k.version_counter(bucket),
                *self._version_keys(bucket, version),
                *self._version_keys(bucket, expected),
            ],
            args=[
                version,
                count,
                expected,
                self._w.grace_seconds,
                to_ms(self._w.clock()),
                "" if rebuild_ms is None else f"{rebuild_ms:.3f}",
                k.changes_channel,
                str(bucket),
            ],
        )
        return int(reply[0]), int(reply[1])
