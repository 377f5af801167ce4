"""Account payloads: what goes into Redis, and decoding that skips unchanged payloads."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from cache.errors import CorruptPayload
from cache.keys import DECODED_ACCOUNTS_MAX, DECODED_SNAPSHOTS_MAX
from cache.models import Account, as_utc

logger = logging.getLogger(__name__)

# Credential entries that are configuration, not secrets; everything else (api keys,
# access and refresh tokens, session keys) stays out of Redis unless configured.
DEFAULT_CACHED_CREDENTIALS = frozenset({"base_url", "model_mapping", "region", "project_id"})


def to_ms(value: datetime) -> int:
    """Integer milliseconds since the epoch (naive datetimes are UTC)."""
    return int(as_utc(value).timestamp() * 1000)


def from_ms(value: bytes | str | int) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def digest(payload: bytes) -> str:
    """A short digest of a payload: equal digests mean equal payloads."""
    return hashlib.blake2b(payload, digest_size=8).hexdigest()


def _same_payload(old: Account, new: Account) -> bool:
    """Whether two accounts encode to the same payload (last use is not in it)."""
    if old is new:
        return True
    if old.revision != new.revision and new.revision is not None:
        return False  # the usual case of a changed account, without comparing fields
    return {**old.__dict__, "last_used_at": None} == {**new.__dict__, "last_used_at": None}


@dataclass(slots=True, frozen=True)
class DecodedRead:
    """A bucket's last decoded read: its fingerprint, last uses and accounts."""

    fingerprint: bytes
    uses: bytes
    use_list: list[bytes]
    accounts: list[Account]


class AccountCodec:
    """Encodes accounts for Redis and decodes them, reusing unchanged work.

    ``last_used_at`` is not part of the payload: it lives in its own hash, so a touch
    never rewrites a payload and an unchanged payload stays byte-for-byte the same. That
    is what lets a read whose payloads are the ones decoded last time skip decoding
    altogether, and a rebuild of unchanged accounts skip encoding.
    """

    def __init__(
        self,
        cached_credentials: Iterable[str] = DEFAULT_CACHED_CREDENTIALS,
        max_decoded: int = DECODED_ACCOUNTS_MAX,
    ) -> None:
        self.cached_credentials = frozenset(cached_credentials)
        self._max_decoded = max_decoded
        # id -> (payload, last-used bytes, account built from both)
        self._decoded: dict[int, tuple[bytes, bytes | None, Account]] = {}
        # id -> (account, its payload, the payload's digest)
        self._encoded: dict[int, tuple[Account, bytes, str]] = {}
        # bucket -> its last decoded read
        self._snapshots: dict[str, DecodedRead] = {}

    # -- encoding --------------------------------------------------------------------
    def encode(self, account: Account) -> tuple[bytes, str]:
        """The payload of ``account`` and its digest."""
        hit = self._encoded.get(account.id)
        if hit is not None and _same_payload(hit[0], account):
            return hit[1], hit[2]
        secret = [key for key in account.credentials if key not in self.cached_credentials]
        exclude: dict[str, Any] = {"last_used_at": True}
        if secret:
            exclude["credentials"] = dict.fromkeys(secret, True)
        # The serializer's bytes as they are: model_dump_json() would decode them to a
        # str that we would only encode again.
        payload = Account.__pydantic_serializer__.to_json(account, exclude=exclude)
        payload_digest = digest(payload)
        if len(self._encoded) >= self._max_decoded:
            self._encoded.clear()
        self._encoded[account.id] = (account, payload, payload_digest)
        return payload, payload_digest

    # -- decoding --------------------------------------------------------------------
    def decode(self, account_id: int, payload: bytes, last_used: bytes | None) -> Account:
        """The account stored under ``account_id``; raise :class:`CorruptPayload`."""
        hit = self._decoded.get(account_id)
        if hit is not None and hit[0] == payload:
            if hit[1] == last_used:
                return hit[2]
            base = hit[2]
        else:
            base = self._validate(account_id, payload)
        account = base.model_copy(
            update={"last_used_at": from_ms(last_used) if last_used else None}
        )
        if len(self._decoded) >= self._max_decoded:
            self._decoded.clear()
        self._decoded[account_id] = (payload, last_used, account)
        return account

    def last_read(self, bucket: str) -> DecodedRead | None:
        """The bucket's last decoded read; pass it back to :meth:`decode_snapshot`."""
        return self._snapshots.get(bucket)

    def decode_snapshot(
        self,
        bucket: str,
        last: DecodedRead | None,
        fingerprint: bytes,
        uses: bytes,
        ids: list[bytes] | None = None,
        payloads: list[bytes] | None = None,
    ) -> list[Account]:
        """Accounts from a snapshot read (see cache/lua/get_snapshot.lua).

        Without ``ids`` and ``payloads`` the read matched the fingerprint of ``last``
        (the read the caller sent the fingerprint of, even if another thread has
        recorded a newer one since): nothing is decoded, only accounts whose last use
        moved get a new object.
        """
        use_list = uses.split(b",")
        if ids is None or payloads is None:
            if last is None or last.fingerprint != fingerprint:
                raise CorruptPayload(f"bucket {bucket}: no decoded read matches {fingerprint!r}")
            if last.uses == uses:
                return list(last.accounts)
            accounts = [
                account
                if new == old
                else account.model_copy(update={"last_used_at": from_ms(new) if new else None})
                for account, old, new in zip(last.accounts, last.use_list, use_list, strict=True)
            ]
        else:
            decode = self.decode
            accounts = [
                decode(int(i), p, u or None)
                for i, p, u in zip(ids, payloads, use_list, strict=True)
            ]
        if len(self._snapshots) >= DECODED_SNAPSHOTS_MAX:
            self._snapshots.clear()
        self._snapshots[bucket] = DecodedRead(fingerprint, uses, use_list, accounts)
        return list(accounts)

    @staticmethod
    def _validate(account_id: int, payload: bytes) -> Account:
        try:
            account = Account.model_validate_json(payload)
        except ValidationError as exc:
            raise CorruptPayload(
                f"account {account_id}: cannot decode payload {payload[:80]!r}: "
                f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']}",
                account_id,
                payload,
            ) from exc
        if account.id != account_id:
            raise CorruptPayload(
                f"account {account_id}: payload is for account {account.id}: {payload[:80]!r}",
                account_id,
                payload,
            )
        return account
