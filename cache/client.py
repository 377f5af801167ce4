"""The Redis scheduling cache: snapshots, accounts and their last use."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from cache.base import raw, redis_errors, text
from cache.codec import from_ms, to_ms
from cache.coordination import CoordinationMixin
from cache.errors import CorruptPayload, VersionNotReserved, brief
from cache.models import Account, BucketInfo, SchedulerBucket, check_account_id
from cache.repair import RepairMixin

logger = logging.getLogger(__name__)


class RedisSchedulerCache(CoordinationMixin, RepairMixin):
    """Versioned snapshots of each bucket's schedulable accounts, in Redis.

    Writers reserve a version *before* they read the source and activate it with a
    compare-and-set, so the snapshot built from the newest read wins::

        rebuild A: reserve v5 .. read (slow, old data) ............ set v5 -> refused
        rebuild B:      reserve v6 .. read (new data) .. set v6 -> active

    Readers get the active snapshot in one atomic script call.
    """

    # -- snapshots -------------------------------------------------------------------
    def get_snapshot(self, bucket: SchedulerBucket) -> list[Account] | None:
        """The active snapshot's accounts in order, or None on a miss.

        A miss: no active version, an empty snapshot, a missing account payload, or a
        corrupt one (logged). Each account's ``last_used_at`` is the cached last use.
        """
        name = str(bucket)
        last = self.codec.last_read(name)
        with redis_errors(f"get_snapshot {bucket}"):
            reply = self._scripts["get_snapshot"](
                keys=[
                    self.keys.meta(bucket),
                    self.keys.accounts,
                    self.keys.digests,
                    self.keys.last_used,
                ],
                args=[self.keys.snapshot_stem(bucket), last.fingerprint if last else b""],
            )
        if not reply:
            return None
        if reply[1] is None:
            version, _, missing = reply
            logger.info(
                "snapshot miss for %s v%s: account %s has no payload",
                bucket,
                text(version),
                text(missing),
            )
            return None
        version, fingerprint, uses, *changed = reply
        try:
            if not changed:
                return self.codec.decode_snapshot(name, last, fingerprint, uses)
            ids, payloads = changed
            return self.codec.decode_snapshot(name, last, fingerprint, uses, ids, payloads)
        except CorruptPayload as exc:
            logger.warning("snapshot miss for %s v%s: %s", bucket, text(version), exc)
            self.forget_corrupt_payload(exc)
            return None

    def reserve_version(self, bucket: SchedulerBucket) -> int:
        """A new version number for ``bucket``; call it before reading the source."""
        with redis_errors(f"reserve_version {bucket}"):
            return int(self.client.incr(self.keys.version_counter(bucket)))

    def set_snapshot(
        self,
        bucket: SchedulerBucket,
        accounts: Iterable[Account],
        version: int | None = None,
        *,
        rebuild_ms: float | None = None,
    ) -> bool:
        """Write ``accounts`` as ``version`` and activate it if nothing newer is active.

        Returns True when it became active. Without ``version`` one is reserved now,
        which is only right when ``accounts`` were read after this call began: a
        rebuilder should call :meth:`reserve_version` before it reads the source.
        Account payloads are written only by the winner, and never over a newer revision.
        """
        if version is None:
            version = self.reserve_version(bucket)
        if version < 1:
            raise VersionNotReserved(f"bucket {bucket}: version {version} was never reserved")
        encode = self.codec.encode
        ids: list[str] = []
        revisions: list[str] = []
        digests: list[str] = []
        uses: list[str] = []
        payloads: list[bytes] = []
        seen: set[int] = set()
        for account in accounts:
            if account.id in seen:
                raise ValueError(f"bucket {bucket}: account {account.id} appears twice")
            seen.add(account.id)
            payload, payload_digest = encode(account)
            used = account.last_used_at
            ids.append(str(account.id))
            revisions.append("-1" if account.revision is None else str(account.revision))
            digests.append(payload_digest)
            uses.append("" if used is None else str(to_ms(used)))
            payloads.append(payload)
        # The small per-account fields travel joined, one argument each: every script
        # argument costs the server far more than its bytes (see set_snapshot.lua).
        args: list[Any] = [
            version,
            self.keys.snapshot_stem(bucket),
            str(bucket),
            self.grace_seconds,
            to_ms(self.clock()),
            "" if rebuild_ms is None else f"{rebuild_ms:.3f}",
            ",".join(ids),
            ",".join(revisions),
            ",".join(digests),
            ",".join(uses),
            *payloads,
        ]
        with redis_errors(f"set_snapshot {bucket} v{version}"):
            status, other = self._scripts["set_snapshot"](
                keys=[
                    self.keys.meta(bucket),
                    self.keys.version_counter(bucket),
                    self.keys.accounts,
                    self.keys.revisions,
                    self.keys.digests,
                    self.keys.last_used,
                    self.keys.registry,
                ],
                args=args,
            )
        if status == -1:
            raise VersionNotReserved(
                f"bucket {bucket}: version {version} was never reserved (last reserved: {other})"
            )
        if status == 0:
            logger.info("bucket %s: v%s not activated, v%s is newer", bucket, version, int(other))
            return False
        return True

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

    def set_account(self, account: Account) -> bool:
        """Store ``account`` unless a newer revision is cached; True when stored."""
        used = account.last_used_at
        payload, payload_digest = self.codec.encode(account)
        with redis_errors(f"set_account {account.id}"):
            stored = self._scripts["set_account"](
                keys=[
                    self.keys.accounts,
                    self.keys.revisions,
                    self.keys.digests,
                    self.keys.last_used,
                ],
                args=[
                    account.id,
                    -1 if account.revision is None else account.revision,
                    payload,
                    payload_digest,
                    "" if used is None else to_ms(used),
                ],
            )
        return bool(stored)

    def delete_account(self, account_id: int, revision: int | None = None) -> bool:
        """Forget an account; with ``revision``, only if nothing newer is cached.

        A tombstone stays behind: a payload of the deleted revision or older (from a
        rebuild that read the account just before it was deleted) is not stored again.
        """
        with redis_errors(f"delete_account {account_id}"):
            deleted = self._scripts["delete_account"](
                keys=[
                    self.keys.accounts,
                    self.keys.revisions,
                    self.keys.digests,
                    self.keys.last_used,
                ],
                args=[account_id, "" if revision is None else revision],
            )
        return bool(deleted)

    # -- last use --------------------------------------------------------------------
    def update_last_used(
        self, updates: Mapping[int, datetime], *, record_pending: bool = False
    ) -> int:
        """Move last-use times forward in one round trip; unknown ids are ignored.

        With ``record_pending`` the times are also kept in a pending hash until
        :meth:`ack_pending_last_used` says the source database has them. Returns how
        many cached times moved forward. An id out of range raises
        :class:`InvalidAccountId` before anything is written.
        """
        if not updates:
            return 0
        args: list[Any] = ["1" if record_pending else "0"]
        for account_id, used in updates.items():
            args.append(check_account_id(account_id))
            args.append(to_ms(used))
        with redis_errors("update_last_used"):
            moved = self._scripts["update_last_used"](
                keys=[self.keys.last_used, self.keys.digests, self.keys.last_used_pending],
                args=args,
            )
        return int(moved)

    def pending_last_used(self) -> dict[int, datetime]:
        """Last-use times not yet acknowledged as written to the source database.

        An entry this package does not write (an id out of range, say from an older
        version, or a time that is not integer ms) is logged and deleted: kept, it
        would fail every write of the others to the database.
        """
        with redis_errors("pending_last_used"):
            raw = self.client.hgetall(self.keys.last_used_pending)
        pending: dict[int, datetime] = {}
        malformed: list[bytes | str] = []
        for key, value in raw.items():
            try:
                pending[check_account_id(key)] = from_ms(value)
            except (ValueError, OverflowError, OSError):
                malformed.append(key)
        if malformed:
            logger.error(
                "dropping %d malformed entries of %s: %s",
                len(malformed),
                self.keys.last_used_pending,
                brief({k: raw[k] for k in malformed[:5]}),
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
