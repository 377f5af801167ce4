"""Account payloads: what goes into Redis, and decoding that skips unchanged payloads."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TypedDict

import msgspec
from pydantic import ValidationError

from cache.errors import CorruptPayload
from cache.keys import DECODED_ACCOUNTS_MAX
from cache.models import Account, as_utc

logger = logging.getLogger(__name__)

# Credential entries that are configuration, not secrets; everything else (api keys,
# access and refresh tokens, session keys) stays out of Redis unless configured.
DEFAULT_CACHED_CREDENTIALS = frozenset({"base_url", "model_mapping", "region", "project_id"})


def to_ms(value: datetime) -> int:
    """Integer milliseconds since the epoch (naive datetimes are UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    # An aware datetime's timestamp does not depend on its zone: no conversion needed.
    return int(value.timestamp() * 1000)


def from_ms(value: bytes | str | int) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def digest(payload: bytes) -> str:
    """A short digest of a payload: equal digests mean equal payloads."""
    return hashlib.blake2b(payload, digest_size=8).hexdigest()


def with_last_used(account: Account, last_used: bytes | int | None) -> Account:
    """``account`` with another last use (integer ms, or None)."""
    return account.model_copy(update={"last_used_at": from_ms(last_used) if last_used else None})


def _with_last_used_json(payload: bytes, last_used: bytes | None) -> bytes:
    """The payload with its last use spliced in, so one validation builds the account:
    a copy with the last use set afterwards costs as much again as the validation."""
    if not last_used or not payload.endswith(b"}") or not last_used.isdigit():
        return payload
    stamp = from_ms(last_used).isoformat().encode()
    return b'%s,"last_used_at":"%s"}' % (payload[:-1], stamp)


_DATETIMES = tuple(
    name for name, field in Account.model_fields.items() if "datetime" in str(field.annotation)
)
# The payload's fields and types, read off the model (a payload is the model without its
# last use): decoding into it parses the datetimes, the status and the tuples in C.
_PAYLOAD_DECODER = msgspec.json.Decoder(
    TypedDict(  # type: ignore[operator]
        "AccountPayload",
        {
            name: field.annotation
            for name, field in Account.model_fields.items()
            if name != "last_used_at"
        },
    )
)
# What decoded accounts are copied from; every field is replaced in each copy.
_BLANK = Account.model_construct()  # type: ignore[call-arg]  # all replaced in copies


def _trusted(payload: bytes, last_used: bytes | None) -> Account | None:
    """The account of a payload this codec's encoder wrote (its digest matched), built
    without validating it again: a few times faster than validation, which is most of a
    first read. None when the payload has not the encoder's shape after all (a field
    missing or of another type), and the caller validates it."""
    try:
        data: dict[str, Any] = _PAYLOAD_DECODER.decode(payload)
        for name in _DATETIMES:
            value = data.get(name)
            if value is not None and value.tzinfo is not UTC:
                data[name] = as_utc(value)  # the encoder writes UTC: never, in practice
        data["last_used_at"] = from_ms(last_used) if last_used else None
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
        return None
    # A copy with every field replaced: pydantic's public way to build a model without
    # validating it (msgspec checked every type above), and faster than model_construct,
    # which walks each field's defaults and aliases.
    return _BLANK.model_copy(update=data)


def _same_payload(old: Account, new: Account) -> bool:
    """Whether two accounts encode to the same payload (last use is not in it)."""
    if old is new:
        return True
    if old.revision != new.revision and new.revision is not None:
        return False  # the usual case of a changed account, without comparing fields
    return {**old.__dict__, "last_used_at": None} == {**new.__dict__, "last_used_at": None}


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
        # id -> (entry or payload, last-used bytes, account built from both)
        self._decoded: dict[int, tuple[bytes, bytes | None, Account]] = {}
        # id -> (account, its payload, the payload's digest)
        self._encoded: dict[int, tuple[Account, bytes, str]] = {}

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
    def held(self, account_id: int, entry: bytes) -> tuple[bytes | None, Account] | None:
        """The account decoded for ``entry`` (its payload's digest and revision) with the
        last use it was decoded with, if any."""
        hit = self._decoded.get(account_id)
        return (hit[1], hit[2]) if hit is not None and hit[0] == entry else None

    def decode(
        self,
        account_id: int,
        payload: bytes | None,
        last_used: bytes | None,
        entry: bytes = b"",
        held: tuple[bytes | None, Account] | None = None,
    ) -> Account:
        """The account stored under ``account_id``; raise :class:`CorruptPayload`.

        From a snapshot, ``entry`` names the payload (digest and revision): a payload
        that matches its digest was written by an encoder and is not validated again;
        without the payload, ``held`` (from :meth:`held`) is reused with ``last_used``.
        """
        token = entry or payload or b""
        if payload is None:
            if held is None:
                raise CorruptPayload(f"account {account_id}: no payload for entry {entry!r}")
            account = held[1] if held[0] == last_used else with_last_used(held[1], last_used)
        else:
            hit = self._decoded.get(account_id)
            if hit is not None and hit[0] == token:
                if hit[1] == last_used:
                    return hit[2]
                account = with_last_used(hit[2], last_used)
            else:
                trusted = None
                if entry and entry.split(b"/", 1)[0].decode() == digest(payload):
                    trusted = _trusted(payload, last_used)
                if trusted is None or trusted.id != account_id:
                    account = self._validate(account_id, payload, last_used)
                else:
                    account = trusted
        if len(self._decoded) >= self._max_decoded:
            self._decoded.clear()
        self._decoded[account_id] = (token, last_used, account)
        return account

    @staticmethod
    def _validate(account_id: int, payload: bytes, last_used: bytes | None) -> Account:
        try:
            account = Account.model_validate_json(_with_last_used_json(payload, last_used))
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
