"""The data the cache stores: buckets and accounts (pydantic v2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cache.errors import InvalidAccountId, InvalidBucket, brief

# Bucket parts end up inside Redis keys and a `{hash tag}`: a ':' would change the
# bucket's shape, braces would move the hash tag, whitespace and control characters
# make keys that operators cannot type. Lowercase tokens are all the source uses.
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# Digits only: int() would also take '+5', ' 5', '1_000' and non-ASCII digits.
_GROUP_ID = re.compile(r"[0-9]{1,19}")
# Ids end up in SQL parameters (BIGINT), Redis hash fields and JSON. Every part of the
# system takes an id only in this range, so an id the database would refuse (and that
# would then fail every batch it is in) never gets in anywhere.
MAX_ID = 2**63 - 1
_MAX_GROUP_ID = MAX_ID


def check_account_id(value: object) -> int:
    """``value`` as an account id: an int, or its ASCII digits (as JSON keys carry it),
    in 1 .. :data:`MAX_ID`; else :class:`InvalidAccountId` naming it briefly."""
    if type(value) is int and 0 < value <= MAX_ID:
        return value  # the common case, checked first: batches of thousands pass here
    number = value
    if isinstance(value, (str, bytes)) and value.isascii() and value.isdigit() and len(value) < 20:
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number <= MAX_ID:
        raise InvalidAccountId(
            f"invalid account id {brief(value)}: expected an integer from 1 to 2**63-1"
        )
    return number


class SchedulerMode(StrEnum):
    SINGLE = "single"
    MIXED = "mixed"
    FORCED = "forced"


class AccountStatus(StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    ERROR = "error"


def validate_token(value: object, what: str) -> str:
    """Return ``value`` if it is a lowercase token usable in a key, else raise."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise InvalidBucket(
            f"invalid {what} {brief(value)}: expected 1-64 characters of a-z, 0-9, '_', '.', '-'"
        )
    return value


class SchedulerBucket(BaseModel):
    """One set of interchangeable accounts: ``"<group_id>:<platform>:<mode>"``."""

    model_config = ConfigDict(frozen=True)

    group_id: int
    platform: str
    mode: SchedulerMode

    def __init__(self, group_id: int, platform: str, mode: SchedulerMode | str) -> None:
        if isinstance(group_id, bool) or not isinstance(group_id, int):
            raise InvalidBucket(f"invalid group id {brief(group_id)}: expected an integer")
        if not 0 <= group_id <= _MAX_GROUP_ID:
            raise InvalidBucket(
                f"invalid group id {brief(group_id)}: must be 0 or a positive int64"
            )
        validate_token(platform, "platform")
        try:
            mode = SchedulerMode(mode)
        except ValueError:
            choices = ", ".join(m.value for m in SchedulerMode)
            raise InvalidBucket(f"invalid mode {brief(mode)}: expected one of {choices}") from None
        super().__init__(group_id=group_id, platform=platform, mode=mode)

    @classmethod
    def parse(cls, raw: object) -> Self:
        """Parse ``"12:anthropic:mixed"``; raise :class:`InvalidBucket` naming the input."""
        if not isinstance(raw, str):
            raise InvalidBucket(f"invalid bucket {brief(raw)}: expected a string")
        parts = raw.split(":")
        if len(parts) != 3:
            raise InvalidBucket(
                f"invalid bucket {brief(raw)}: expected '<group_id>:<platform>:<mode>'"
            )
        group, platform, mode = parts
        if not _GROUP_ID.fullmatch(group):
            raise InvalidBucket(
                f"invalid bucket {brief(raw)}: group id {brief(group)} is not an integer >= 0"
            )
        try:
            return cls(int(group), platform, mode)
        except InvalidBucket as exc:
            raise InvalidBucket(f"invalid bucket {brief(raw)}: {exc}") from None

    def __str__(self) -> str:
        return f"{self.group_id}:{self.platform}:{self.mode.value}"

    def __repr__(self) -> str:
        return f"SchedulerBucket({str(self)!r})"


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime.

    A naive one is taken to be UTC already: the source stores UTC without a zone
    (SQLite has none), and so do callers that pass ``datetime.utcnow()``-style times.
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Account(BaseModel):
    """The scheduling view of one upstream account.

    Instances are frozen and may be shared between reads: the cache hands out the same
    object for an unchanged payload instead of decoding it again.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: int = Field(gt=0, le=MAX_ID)
    name: str
    platform: str
    type: str
    status: AccountStatus = AccountStatus.ACTIVE
    schedulable: bool = True
    priority: int = 50
    concurrency: int = 3
    load_factor: int | None = None
    rate_multiplier: float | None = None
    last_used_at: datetime | None = None
    expires_at: datetime | None = None
    auto_pause_on_expired: bool = False
    rate_limited_at: datetime | None = None
    rate_limit_reset_at: datetime | None = None
    overload_until: datetime | None = None
    temp_unschedulable_until: datetime | None = None
    temp_unschedulable_reason: str | None = None
    session_window_start: datetime | None = None
    session_window_end: datetime | None = None
    session_window_status: str | None = None
    group_ids: tuple[int, ...] = ()
    credentials: dict[str, Any] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    # Grows with every change in the source; a payload never replaces a newer one.
    # None is an unversioned payload and counts as older than any revision.
    revision: int | None = None

    @field_validator("platform", "type")
    @classmethod
    def _token(cls, value: str) -> str:
        try:
            return validate_token(value, "platform or type")
        except InvalidBucket as exc:
            raise ValueError(str(exc)) from None

    @field_validator(
        "last_used_at",
        "expires_at",
        "rate_limited_at",
        "rate_limit_reset_at",
        "overload_until",
        "temp_unschedulable_until",
        "session_window_start",
        "session_window_end",
    )
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else as_utc(value)

    def is_schedulable(self, now: datetime) -> bool:
        """Whether a request may be sent through this account at ``now``."""
        if self.status is not AccountStatus.ACTIVE or not self.schedulable:
            return False
        if self.auto_pause_on_expired and self.expires_at is not None and self.expires_at <= now:
            return False
        for until in (self.overload_until, self.rate_limit_reset_at, self.temp_unschedulable_until):
            if until is not None and until > now:
                return False
        return True

    def blocked_until(self, now: datetime) -> datetime | None:
        """When a time-limited exclusion (rate limit, overload, temporary block) ends.

        None when the account is not held back by time alone.
        """
        ends = [
            until
            for until in (
                self.overload_until,
                self.rate_limit_reset_at,
                self.temp_unschedulable_until,
            )
            if until is not None and until > now
        ]
        return max(ends) if ends else None

    def is_candidate(self, now: datetime) -> bool:
        """Whether the account belongs in a snapshot at ``now``.

        Candidates are the schedulable accounts plus those held back only until a
        known time: snapshots keep them so that they return the moment their window
        ends, with no rebuild; readers filter with :meth:`is_schedulable`.
        """
        if self.status is not AccountStatus.ACTIVE or not self.schedulable:
            return False
        return not (
            self.auto_pause_on_expired and self.expires_at is not None and self.expires_at <= now
        )


class BucketInfo(BaseModel):
    """What the cache knows about one bucket, for status views."""

    model_config = ConfigDict(frozen=True)

    bucket: SchedulerBucket
    active_version: int | None
    reserved_version: int
    account_count: int
    built_at: datetime | None
    rebuild_ms: float | None
