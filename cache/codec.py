"""Account payloads: what goes into Redis, and decoding that skips unchanged payloads."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from cache.errors import CorruptPayload
from cache.keys import DECODED_ACCOUNTS_MAX
from cache.models import Account

logger = logging.getLogger(__name__)

# Credential entries that are configuration, not secrets; everything else (api keys,
# access and refresh tokens, session keys) stays out of Redis unless configured.
DEFAULT_CACHED_CREDENTIALS = frozenset({"base_url", "model_mapping", "region", "project_id"})


def to_ms(value: datetime) -> int:
    """Integer milliseconds since the epoch (naive datetimes are UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def from_ms(value: bytes | str | int) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


class AccountCodec:
    """Encodes accounts for Redis and decodes them, reusing unchanged decodes.

    ``last_used_at`` is not part of the payload: it lives in its own hash, so a touch
    never rewrites a payload and an unchanged payload stays byte-for-byte the same,
    which is what lets :meth:`decode` return the account it decoded last time.
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

    def encode(self, account: Account) -> bytes:
        secret = [key for key in account.credentials if key not in self.cached_credentials]
        exclude: dict[str, Any] = {"last_used_at": True}
        if secret:
            exclude["credentials"] = dict.fromkeys(secret, True)
        return account.model_dump_json(exclude=exclude).encode()

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
            update={"last_used_at": from_ms(last_used) if last_used is not None else None}
        )
        if len(self._decoded) >= self._max_decoded:
            self._decoded.clear()
        self._decoded[account_id] = (payload, last_used, account)
        return account

    @staticmethod
    def _validate(account_id: int, payload: bytes) -> Account:
        try:
            account = Account.model_validate_json(payload)
        except ValidationError as exc:
            raise CorruptPayload(
                f"account {account_id}: cannot decode payload {payload[:80]!r}: "
                f"{exc.error_count()} error(s), first: {exc.errors()[0]['msg']}"
            ) from exc
        if account.id != account_id:
            raise CorruptPayload(
                f"account {account_id}: payload is for account {account.id}: {payload[:80]!r}"
            )
        return account
