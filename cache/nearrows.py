"""One account as a near cache holds it: a :class:`Row`, a few hundred bytes where a
decoded :class:`cache.models.Account` takes about three thousand.

A row keeps what the pick and ``is_schedulable`` read (priority, status, the windows
that hold an account back), the last use laid over it, the entry that names its payload,
and the payload itself packed: the payload's values, in the model's field order, as
MessagePack (about 200 bytes for a payload of 680 in JSON: the field names go). The
:class:`Account` is built from it when a caller asks for it (:func:`materialize`), and
kept on the row only while its bucket is within the decoded budget (see
:mod:`cache.nearentry`). A payload holds no credential the encoder left out, so a row
holds no more secret material than the decoded account did.

Built from the payload's JSON in one pass (:func:`row_of_payload`): msgspec decodes it
into a struct of the payload's fields, checking every type, then packs it; no pydantic
model and no dict on the way, which is what makes a first read of a large bucket
cheaper than ``json.loads`` of its payloads.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from cache.codec import AccountCodec, digest, from_ms
from cache.models import Account, AccountStatus

# The payload's fields (the model's, less the last use), in the model's order.
FIELDS = tuple(name for name in Account.model_fields if name != "last_used_at")
_REQUIRED = ("id", "name", "platform", "type")


def _field(name: str) -> tuple[str, Any, Any]:
    info = Account.model_fields[name]
    if name in _REQUIRED:
        return name, info.annotation, msgspec.NODEFAULT
    default = info.get_default(call_default_factory=True)
    return name, info.annotation, msgspec.field(default_factory=lambda: default)


# Decodes a payload's JSON object (unknown keys skipped, as the model ignores extras).
_Payload = msgspec.defstruct("_Payload", [_field(n) for n in FIELDS], kw_only=True)
_FROM_JSON = msgspec.json.Decoder(_Payload)
# The same values as an array: what a row keeps, decoded back into a typed tuple.
_FROM_PACKED = msgspec.msgpack.Decoder(
    tuple[tuple(Account.model_fields[n].annotation for n in FIELDS)]  # type: ignore[misc]
)
_PACK = msgspec.msgpack.Encoder()
_astuple = msgspec.structs.astuple
# What materialized accounts are copied from; every field is replaced in each copy.
_BLANK = Account.model_construct()  # type: ignore[call-arg]  # all replaced in copies


class Row(msgspec.Struct, gc=False, eq=False):
    """One account of a held bucket: the fields a pick reads, the last use laid over
    it (integer ms, 0: never), and its payload packed (or, for an account handed in
    decoded, the account itself). Made by :func:`row_of_payload` and
    :func:`row_of_account`.

    A struct the garbage collector does not track (``gc=False``): a row refers to
    bytes, ints, datetimes and an :class:`Account`, none of which refers back to it,
    so it can be in no reference cycle. At 100,000 accounts that is 100,000 objects
    fewer for every full collection to walk (the event loop stops while it does), and
    16 bytes less a row."""

    id: int
    # The entry ('<digest>/<revision>': the same entry, the same payload) and the
    # packed payload in one bytes object, ``cut`` the entry's length: one object an
    # account less, about 40 bytes. An account handed in decoded is kept as it is,
    # ``cut`` then the entry itself.
    packed: bytes | Account
    cut: int | bytes
    used: int
    priority: int
    active: bool
    expires: datetime | None
    # The latest end of the windows that hold it back (rate limit, overload, temporary
    # block): all that the pick asks of them.
    until: datetime | None
    # The account as last materialized, with ``used`` laid over; None when not kept.
    account: Account | None = None
    # Its valid entry in its bucket's pick order (see cache.pickindex); None: none yet.
    key: int | None = None

    @property
    def entry(self) -> bytes:
        cut = self.cut
        if isinstance(cut, bytes):
            return cut
        assert isinstance(self.packed, bytes)
        return self.packed[:cut]

    def payload(self) -> memoryview:
        """The packed payload (of a row made from one)."""
        assert isinstance(self.packed, bytes) and isinstance(self.cut, int)
        return memoryview(self.packed)[self.cut :]

    # -- what the pick reads (as Account's methods of the same names) -----------------
    def is_candidate(self, now: datetime) -> bool:
        return self.active and (self.expires is None or self.expires > now)

    def is_schedulable(self, now: datetime) -> bool:
        if not self.active or (self.expires is not None and self.expires <= now):
            return False
        return self.until is None or self.until <= now

    def blocked_until(self, now: datetime) -> datetime | None:
        return self.until if self.until is not None and self.until > now else None

    def lay(self, used: int) -> None:
        """Serve ``used`` (integer ms) as the last use from now on."""
        self.used = used
        if self.account is not None:
            self.account = _at(self.account, used)

    def boundaries(self) -> tuple[datetime | None, ...]:
        """The times at which ``is_schedulable`` may change."""
        return (self.until, self.expires)

    def __repr__(self) -> str:
        return f"Row({self.id}, {self.entry!r}, used={self.used})"


def row_of_payload(account_id: int, entry: bytes, payload: bytes, used: int) -> Row:
    """The row of a payload read from Redis; :class:`CorruptPayload` when it is not an
    account's. A payload that does not match its entry's digest was not written by an
    encoder and is validated in full first, as a read that decodes it would."""
    try:
        decoded: Any = _FROM_JSON.decode(payload)
        trusted = decoded.id == account_id and entry.partition(b"/")[0] == _digest(payload)
    except (msgspec.ValidationError, msgspec.DecodeError):
        trusted = False
    if not trusted:
        account = AccountCodec._validate(account_id, payload, None)
        return row_of_account(account, used, entry)
    packed = entry + _PACK.encode(_astuple(decoded))
    return _row(account_id, packed, len(entry), used, decoded)


def row_of_account(account: Account, used: int, entry: bytes = b"") -> Row:
    """The row of an account handed in decoded: it is kept as it is."""
    row = _row(account.id, account, entry, used, account)
    row.account = _at(account, used)
    return row


def _row(
    account_id: int, packed: bytes | Account, cut: int | bytes, used: int, fields: Account | Any
) -> Row:
    ends = (fields.overload_until, fields.rate_limit_reset_at, fields.temp_unschedulable_until)
    return Row(
        account_id,
        packed,
        cut,
        used,
        fields.priority,
        fields.status is AccountStatus.ACTIVE and fields.schedulable,
        fields.expires_at if fields.auto_pause_on_expired else None,
        max((t for t in ends if t is not None), default=None),
    )


def _digest(payload: bytes) -> bytes:
    return digest(payload).encode()


def materialize(row: Row) -> Account:
    """The row's account, with its last use."""
    held = row.account
    if held is not None:
        return held
    packed = row.packed
    if isinstance(packed, Account):
        return _at(packed, row.used)
    data = dict(zip(FIELDS, _FROM_PACKED.decode(row.payload()), strict=True))
    data["last_used_at"] = from_ms(row.used) if row.used else None
    return _BLANK.model_copy(update=data)


def _at(account: Account, used: int) -> Account:
    stamp = from_ms(used) if used else None
    if account.last_used_at == stamp:
        return account
    return account.model_copy(update={"last_used_at": stamp})
