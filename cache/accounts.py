"""The shared account store: each account's newest payload, revision and digest, and
tombstones of deleted ones; the only writer of those keys and of the bucket index."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from cache.base import Wiring, raw, redis_errors, text
from cache.codec import to_ms
from cache.errors import CorruptPayload
from cache.keys import INDEX_CHUNK, READ_CHUNK, WRITE_CHUNK
from cache.models import Account, SchedulerBucket
from cache.patches import DELETED, AccountPatcher, Reach, parse_index, removal

logger = logging.getLogger(__name__)


# Whether a version may hold an account as the store has it now (see take_newer).
Keeps = Callable[[Account], bool]


@dataclass(slots=True)
class Staged:
    """One account as a snapshot version holds it."""

    id: str
    revision: str
    digest: str
    payload: bytes


def _newer(stored: bytes | None, revision: str) -> bool:
    return stored is not None and float(stored) > float(revision)


class AccountStore:
    """Accounts by id, as new as any snapshot or change that reached the cache.

    A payload never replaces a newer revision; a deletion leaves a tombstone (the
    deleted revision + 0.5) that only a later revision passes. A change reaches every
    snapshot version that lists the account (:class:`cache.patches.AccountPatcher`).
    """

    def __init__(self, wiring: Wiring, patcher: AccountPatcher) -> None:
        self._w = wiring
        self._patcher = patcher

    def get_account(self, account_id: int) -> Account | None:
        """The cached account, or None; raise :class:`CorruptPayload` if undecodable."""
        k = self._w.keys
        with redis_errors(f"get_account {account_id}", k.accounts):
            pipe = self._w.client.pipeline(transaction=False)
            pipe.hget(k.accounts, account_id)
            pipe.hget(k.last_used, account_id)
            payload, used = pipe.execute()
        if payload is None:
            return None
        try:
            return self._w.codec.decode(account_id, raw(payload), used and raw(used))
        except CorruptPayload as exc:
            self.forget_corrupt_payload(exc)
            raise

    def forget_corrupt_payload(self, exc: CorruptPayload) -> bool:
        """Make the next write of the account in ``exc`` replace its undecodable payload
        (see cache/lua/forget_payload.lua); True when it will."""
        if exc.account_id is None or exc.payload is None:
            return False
        k = self._w.keys
        with redis_errors(f"forget_corrupt_payload {exc.account_id}", k.accounts):
            return bool(
                self._w.scripts["forget_payload"](
                    keys=[k.accounts, k.digests], args=[exc.account_id, exc.payload]
                )
            )

    def set_account(
        self, account: Account, belongs: Collection[SchedulerBucket] | None = None
    ) -> bool:
        """Store ``account`` unless a newer revision is cached; True when stored.

        Every snapshot version that lists the account gets the new payload too: one
        push per bucket whose active version changed. With ``belongs`` (the buckets
        the account belongs to now, by the caller's rules), a version of any other
        bucket that lists it has it removed instead (readers skip it).
        """
        return self.change_account(account, belongs) is not None

    def change_account(
        self, account: Account, belongs: Collection[SchedulerBucket] | None = None
    ) -> Reach | None:
        """:meth:`set_account`, saying which buckets' active versions list the account
        now and which of them a writer may be rebuilding from an older read; None when
        a newer revision is cached (nothing changed)."""
        used = account.last_used_at
        payload, payload_digest = self._w.codec.encode(account)
        revision = -1 if account.revision is None else account.revision
        k = self._w.keys
        with redis_errors(f"set_account {account.id}", k.accounts):
            stored, index = self._w.scripts["set_account"](
                keys=[
                    k.accounts,
                    k.revisions,
                    k.digests,
                    k.last_used,
                    k.last_used_log,
                    k.last_used_seq,
                    k.account_buckets(account.id),
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
                return None
            return self._patcher.reach(
                account.id, parse_index(index), str(revision), payload_digest, payload, belongs
            )

    def delete_account(self, account_id: int, revision: int | None = None) -> bool:
        """Forget an account; with ``revision``, only if nothing newer is cached.

        A tombstone stays behind: a payload of the deleted revision or older (from a
        rebuild that read the account just before it was deleted) is not stored again.
        Snapshots that list the account miss from now until their next rebuild.
        """
        k = self._w.keys
        with redis_errors(f"delete_account {account_id}", k.accounts):
            deleted, tombstone, index = self._w.scripts["delete_account"](
                keys=[
                    k.accounts,
                    k.revisions,
                    k.digests,
                    k.last_used,
                    k.account_buckets(account_id),
                ],
                args=[account_id, "" if revision is None else revision],
            )
            if deleted or tombstone:
                self._patcher.reach(
                    account_id, parse_index(index), text(tombstone or b""), DELETED, b""
                )
        return bool(deleted)

    def behind(self, accounts: list[Account]) -> list[Account]:
        """Those of ``accounts`` (read from the source) whose stored payload is of an
        older revision: a change not applied to the store yet, nor to the snapshot
        versions that list the account."""
        versioned = [a for a in accounts if a.revision is not None]
        if not versioned:
            return []
        k = self._w.keys
        with redis_errors("behind", k.revisions):
            pipe = self._w.client.pipeline(transaction=False)
            for first in range(0, len(versioned), READ_CHUNK):
                pipe.hmget(k.revisions, [a.id for a in versioned[first : first + READ_CHUNK]])
            stored = [r for part in pipe.execute() for r in part]
        return [
            a
            for a, rev in zip(versioned, stored, strict=True)
            if rev is not None and float(text(rev)) < (a.revision or 0)
        ]

    # -- for the snapshot writer ---------------------------------------------------------
    def take_newer(self, staged: list[Staged], keeps: Keeps | None = None) -> None:
        """The store's payload where it holds a newer revision (or a deletion); a
        removal instead where ``keeps`` says the version may not hold the account as
        the store has it (it left the bucket since the version's read)."""
        if not staged:
            return
        k = self._w.keys
        pipe = self._w.client.pipeline(transaction=False)
        for first in range(0, len(staged), READ_CHUNK):
            pipe.hmget(k.revisions, [s.id for s in staged[first : first + READ_CHUNK]])
        stored = [r for part in pipe.execute() for r in part]
        newer = [(s, rev) for s, rev in zip(staged, stored, strict=True) if _newer(rev, s.revision)]
        if newer:
            self._fill(newer, keeps)

    def _fill(self, newer: list[tuple[Staged, bytes]], keeps: Keeps | None) -> None:
        k = self._w.keys
        pipe = self._w.client.pipeline(transaction=False)
        ids = [s.id for s, _ in newer]
        for first in range(0, len(ids), READ_CHUNK):
            pipe.hmget(k.accounts, ids[first : first + READ_CHUNK])
            pipe.hmget(k.digests, ids[first : first + READ_CHUNK])
        replies = pipe.execute()
        payloads = [p for part in replies[0::2] for p in part]
        digests = [d for part in replies[1::2] for d in part]
        for (s, rev), payload, payload_digest in zip(newer, payloads, digests, strict=True):
            s.revision = text(rev)
            if payload is None or payload_digest is None:
                s.digest, s.payload = DELETED, b""
            elif keeps is not None and not _kept(s.id, payload, keeps):
                s.revision, s.digest, s.payload = removal(s.revision), DELETED, b""
            else:
                s.digest, s.payload = text(payload_digest), payload

    def index(
        self,
        bucket: SchedulerBucket,
        version: int,
        staged: list[Staged],
        keeps: Keeps | None = None,
    ) -> list[Staged]:
        """Note that ``version`` of ``bucket`` lists ``staged`` (accounts new to the bucket:
        the others are indexed already); returns those the store holds newer revisions
        of, filled with the store's payloads."""
        k = self._w.keys
        calls: list[tuple[list[str], list[Any]]] = []
        for first in range(0, len(staged), INDEX_CHUNK):
            part = staged[first : first + INDEX_CHUNK]
            keys = [k.revisions, *(k.account_buckets(s.id) for s in part)]
            args: list[Any] = [
                str(bucket),
                version,
                ",".join(s.id for s in part),
                ",".join(s.revision for s in part),
            ]
            calls.append((keys, args))
        if not calls:
            return []
        newer_ids = {text(i) for part in self._w.run("index_accounts", calls) for i in part}
        return self.newer([s for s in staged if s.id in newer_ids], keeps)

    def newer(self, staged: list[Staged], keeps: Keeps | None = None) -> list[Staged]:
        """Copies of those of ``staged`` the store holds newer revisions (or deletions)
        of, filled as :meth:`take_newer` does."""
        copies = [Staged(s.id, s.revision, s.digest, s.payload) for s in staged]
        self.take_newer(copies, keeps)
        return [c for c, s in zip(copies, staged, strict=True) if c.revision != s.revision]

    def store(self, staged: list[Staged], keeps: Keeps | None = None) -> list[Staged]:
        """After an activation: bring the store up to the version's payloads; returns
        those the store holds newer revisions of (changes the version may have missed:
        see cache/snapshots.py), filled with the store's payloads."""
        live = [s for s in staged if s.digest != DELETED]
        if not live:
            return self.newer(staged, keeps)
        k = self._w.keys
        keys = [k.accounts, k.revisions, k.digests]
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
        newer_ids = {text(i) for part in self._w.run("store_accounts", calls) for i in part}
        deleted = [s for s in staged if s.digest == DELETED]
        return self.newer([s for s in live if s.id in newer_ids] + deleted, keeps)

    def patch_version(self, bucket: SchedulerBucket, version: int, newer: list[Staged]) -> None:
        """Put the store's newer revisions into a staged ``version`` of ``bucket``."""
        for s in newer:
            self._patcher.reach(int(s.id), {bucket: version}, s.revision, s.digest, s.payload)


def _kept(account_id: str, payload: bytes, keeps: Keeps) -> bool:
    """``keeps`` of the stored payload; True for one that cannot be read (the reader
    reports it, as for any corrupt payload)."""
    try:
        account = Account.model_validate_json(payload)
    except ValueError:
        logger.warning("account %s: stored payload unreadable: %r", account_id, payload[:80])
        return True
    return keeps(account)
