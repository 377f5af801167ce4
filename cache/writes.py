"""Writing snapshots and accounts: staged in bounded chunks, activated in one step.

Every script touches one Cluster slot: a snapshot's versions live under the bucket's
hash tag, the account store under the shared one. What spans both is done in steps
whose order keeps the guarantees (see :meth:`WriteMixin.set_snapshot`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from cache.base import CacheBase, redis_errors, text
from cache.codec import to_ms
from cache.errors import CacheError, VersionNotReserved
from cache.keys import (
    DECODED_ACCOUNTS_MAX,
    READ_CHUNK,
    STAGE_TTL_SECONDS,
    TOUCH_LOG_BATCHES,
    WRITE_CHUNK,
)
from cache.models import Account, SchedulerBucket, check_account_id

logger = logging.getLogger(__name__)

# What an entry's digest is for an account that has no payload (deleted).
DELETED = "-"


@dataclass(slots=True)
class Staged:
    """One account as a version holds it."""

    id: str
    revision: str
    digest: str
    payload: bytes


def _newer(stored: bytes | None, revision: str) -> bool:
    return stored is not None and float(stored) > float(revision)


def _groups(payload: bytes | None) -> set[int]:
    """The groups a stored payload names (group 0 for none); empty if unreadable."""
    if not payload:
        return set()
    try:
        groups = json.loads(payload).get("group_ids") or [0]
        return {int(g) for g in groups}
    except (ValueError, TypeError, AttributeError):
        return set()


class WriteMixin(CacheBase):
    """The writing half of :class:`cache.client.RedisSchedulerCache`."""

    # Last uses this writer seeded from accounts' payloads, by id.
    _seeded: dict[int, datetime]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._seeded = {}

    def _run(self, name: str, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Script ``name`` once per (keys, args): one call directly, more in a pipeline
        (which costs one extra round trip to check the script is loaded)."""
        script = self._scripts[name]
        if len(calls) == 1:
            keys, args = calls[0]
            return [script(keys=keys, args=args)]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return pipe.execute()

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

        The steps, and why in this order::

            1. accounts the shared store holds newer (or deleted) revisions of take
               the store's payload: a payload never replaces a newer one
            2. the bucket joins the registry (so set_account finds it from now on)
            3. version N is staged in chunks; its keys expire unless activated
            4. one compare-and-set activates N, or the writer lost: it unlinks what it
               staged, and readers saw nothing of it
            5. the winner brings the shared store up to its payloads, and patches into
               N any account changed since step 1 (set_account after step 2 patches
               N itself; before it, step 5 sees the change)
        """
        if version is None:
            version = self.reserve_version(bucket)
        if version < 1:
            raise VersionNotReserved(f"bucket {bucket}: version {version} was never reserved")
        staged, uses = self._encode_all(bucket, accounts)
        with redis_errors(f"set_snapshot {bucket} v{version}"):
            self._take_newer(staged)
            self.client.sadd(self.keys.registry, str(bucket))
            status, other = self._stage(bucket, version, staged)
            if status == 1:
                status, other = self._activate(bucket, version, len(staged), rebuild_ms)
            if status != 1:
                self.client.unlink(*self._version_keys(bucket, version))
            if status == -1:
                raise VersionNotReserved(
                    f"bucket {bucket}: version {version} was never reserved "
                    f"(last reserved: {other})"
                )
            if status == -2:
                raise CacheError(f"bucket {bucket}: staged v{version} expired before activation")
            if status == 0:
                logger.info("bucket %s: v%s not activated, v%s is newer", bucket, version, other)
                return False
            self._store_winner(bucket, staged)
        # No version before this one: a new bucket, or a Redis that lost its state.
        self._seed_last_used(uses, everything=other == 0)
        return True

    def _seed_last_used(self, uses: dict[int, datetime], *, everything: bool) -> None:
        """Last uses the accounts carried, unless this writer sent them already: a
        refresh rebuilds the same accounts again and again, with the same times."""
        sent = self._seeded
        fresh = uses if everything else {i: t for i, t in uses.items() if sent.get(i) != t}
        if not fresh:
            return
        self.update_last_used(fresh)
        if len(sent) + len(fresh) > DECODED_ACCOUNTS_MAX:
            sent.clear()
        sent.update(fresh)

    def _encode_all(
        self, bucket: SchedulerBucket, accounts: Iterable[Account]
    ) -> tuple[list[Staged], dict[int, datetime]]:
        encode = self.codec.encode
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

    def _take_newer(self, staged: list[Staged]) -> None:
        """Step 1: the store's payload where it holds a newer revision (or a deletion)."""
        if not staged:
            return
        pipe = self.client.pipeline(transaction=False)
        for first in range(0, len(staged), READ_CHUNK):
            pipe.hmget(self.keys.revisions, [s.id for s in staged[first : first + READ_CHUNK]])
        stored = [r for part in pipe.execute() for r in part]
        newer = [(s, rev) for s, rev in zip(staged, stored, strict=True) if _newer(rev, s.revision)]
        if not newer:
            return
        pipe = self.client.pipeline(transaction=False)
        ids = [s.id for s, _ in newer]
        for first in range(0, len(ids), READ_CHUNK):
            pipe.hmget(self.keys.accounts, ids[first : first + READ_CHUNK])
            pipe.hmget(self.keys.digests, ids[first : first + READ_CHUNK])
        replies = pipe.execute()
        payloads = [p for part in replies[0::2] for p in part]
        digests = [d for part in replies[1::2] for d in part]
        for (s, rev), payload, payload_digest in zip(newer, payloads, digests, strict=True):
            s.revision = text(rev)
            if payload is None or payload_digest is None:
                s.digest, s.payload = DELETED, b""
            else:
                s.digest, s.payload = text(payload_digest), payload

    def _version_keys(self, bucket: SchedulerBucket, version: int) -> list[str]:
        k = self.keys
        return [
            k.snapshot(bucket, version),
            k.payloads(bucket, version),
            k.entries(bucket, version),
        ]

    def _stage(self, bucket: SchedulerBucket, version: int, staged: list[Staged]) -> list[int]:
        """Step 3; returns the last chunk's status (or the first that failed)."""
        if not staged:
            return [1, 0]
        keys = [self.keys.meta(bucket), self.keys.version_counter(bucket)]
        keys += self._version_keys(bucket, version)
        calls = []
        for first in range(0, len(staged), WRITE_CHUNK):
            part = staged[first : first + WRITE_CHUNK]
            args: list[Any] = [
                version,
                STAGE_TTL_SECONDS,
                ",".join(s.id for s in part),
                ",".join(f"{s.digest}/{s.revision}" for s in part),
                *(s.payload for s in part),
            ]
            calls.append((keys, args))
        replies = self._run("stage_snapshot", calls)
        return cast(list[int], next((r for r in replies if r[0] != 1), replies[-1]))

    def _activate(
        self, bucket: SchedulerBucket, version: int, count: int, rebuild_ms: float | None
    ) -> list[int]:
        """Step 4: the compare-and-set, of constant cost."""
        k = self.keys
        reply = self._scripts["activate_snapshot"](
            keys=[k.meta(bucket), k.version_counter(bucket), *self._version_keys(bucket, version)],
            args=[
                version,
                count,
                k.snapshot_stem(bucket),
                k.payloads_stem(bucket),
                k.entries_stem(bucket),
                self.grace_seconds,
                to_ms(self.clock()),
                "" if rebuild_ms is None else f"{rebuild_ms:.3f}",
                k.changes_channel,
                str(bucket),
            ],
        )
        return [int(reply[0]), int(reply[1])]

    def _store_winner(self, bucket: SchedulerBucket, staged: list[Staged]) -> None:
        """Step 5."""
        live = [s for s in staged if s.digest != DELETED]
        if not live:
            return
        keys = [self.keys.accounts, self.keys.revisions, self.keys.digests]
        calls = []
        for first in range(0, len(live), WRITE_CHUNK):
            part = live[first : first + WRITE_CHUNK]
            args: list[Any] = [
                ",".join(s.id for s in part),
                ",".join(s.revision for s in part),
                ",".join(s.digest for s in part),
                *(s.payload for s in part),
            ]
            calls.append((keys, args))
        newer = [int(i) for part in self._run("store_accounts", calls) for i in part]
        for account_id in newer:
            self._patch_from_store(account_id, [bucket])

    # -- one account, in every bucket that lists it ------------------------------------
    def _buckets_of(self, groups: set[int]) -> list[SchedulerBucket]:
        """Registered buckets of ``groups``: the ones whose versions may list an account
        of those groups (a mixed bucket lists donor accounts of its group too)."""
        members = cast(set[bytes], self.client.smembers(self.keys.registry))
        found = []
        for member in members:
            try:
                bucket = SchedulerBucket.parse(text(member))
            except CacheError:
                continue
            if bucket.group_id in groups:
                found.append(bucket)
        return found

    def _patch(
        self,
        buckets: Iterable[SchedulerBucket],
        account_id: int,
        revision: str,
        digest: str,
        payload: bytes,
    ) -> None:
        k = self.keys
        calls: list[tuple[list[str], list[Any]]] = [
            (
                [k.meta(bucket)],
                [
                    k.payloads_stem(bucket),
                    k.entries_stem(bucket),
                    account_id,
                    revision,
                    digest,
                    payload,
                    k.changes_channel,
                    str(bucket),
                ],
            )
            for bucket in buckets
        ]
        if calls:
            self._run("patch_account", calls)

    def _patch_from_store(self, account_id: int, buckets: list[SchedulerBucket]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.accounts, account_id)
        pipe.hget(self.keys.digests, account_id)
        pipe.hget(self.keys.revisions, account_id)
        payload, payload_digest, revision = pipe.execute()
        if revision is None:
            return
        if payload is None or payload_digest is None:
            self._patch(buckets, account_id, text(revision), DELETED, b"")
        else:
            self._patch(buckets, account_id, text(revision), text(payload_digest), payload)

    def set_account(self, account: Account) -> bool:
        """Store ``account`` unless a newer revision is cached; True when stored.

        Every snapshot that lists the account gets the new payload too (it is found
        among the registered buckets of its groups, before and after the change).
        """
        used = account.last_used_at
        payload, payload_digest = self.codec.encode(account)
        revision = -1 if account.revision is None else account.revision
        with redis_errors(f"set_account {account.id}"):
            stored, previous = self._scripts["set_account"](
                keys=[
                    self.keys.accounts,
                    self.keys.revisions,
                    self.keys.digests,
                    self.keys.last_used,
                    self.keys.last_used_log,
                    self.keys.last_used_seq,
                ],
                args=[
                    account.id,
                    revision,
                    payload,
                    payload_digest,
                    "" if used is None else to_ms(used),
                ],
            )
            if not stored:
                return False
            groups = set(account.group_ids or (0,)) | _groups(previous)
            self._patch(
                self._buckets_of(groups), account.id, str(revision), payload_digest, payload
            )
        return True

    def delete_account(self, account_id: int, revision: int | None = None) -> bool:
        """Forget an account; with ``revision``, only if nothing newer is cached.

        A tombstone stays behind: a payload of the deleted revision or older (from a
        rebuild that read the account just before it was deleted) is not stored again.
        Snapshots that list the account miss until their next rebuild.
        """
        with redis_errors(f"delete_account {account_id}"):
            deleted, tombstone, previous = self._scripts["delete_account"](
                keys=[
                    self.keys.accounts,
                    self.keys.revisions,
                    self.keys.digests,
                    self.keys.last_used,
                ],
                args=[account_id, "" if revision is None else revision],
            )
            if previous:
                buckets = self._buckets_of(_groups(previous))
                self._patch(buckets, account_id, text(tombstone or b""), DELETED, b"")
        return bool(deleted)

    # -- last use --------------------------------------------------------------------
    def update_last_used(
        self, updates: Mapping[int, datetime], *, record_pending: bool = False
    ) -> int:
        """Move last-use times forward; unknown ids are ignored.

        With ``record_pending`` the times are also kept in a pending hash until
        :meth:`ack_pending_last_used` says the source database has them. Returns how
        many cached times moved forward. One round trip, in chunks of bounded cost. An
        id out of range raises :class:`InvalidAccountId` before anything is written.
        """
        if not updates:
            return 0
        items = [(str(check_account_id(i)), str(to_ms(used))) for i, used in updates.items()]
        keys = [
            self.keys.last_used,
            self.keys.digests,
            self.keys.last_used_pending,
            self.keys.last_used_log,
            self.keys.last_used_seq,
        ]
        calls: list[tuple[list[str], list[Any]]] = []
        for first in range(0, len(items), WRITE_CHUNK * 2):
            part = items[first : first + WRITE_CHUNK * 2]
            args = [
                "1" if record_pending else "0",
                ",".join(i for i, _ in part),
                ",".join(u for _, u in part),
                TOUCH_LOG_BATCHES,
            ]
            calls.append((keys, args))
        with redis_errors("update_last_used"):
            return sum(int(moved) for moved in self._run("update_last_used", calls))
