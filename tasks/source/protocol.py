"""The seam between the tasks and the source database."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

from cache import Account, SchedulerBucket


class OutboxEventType(StrEnum):
    ACCOUNT_CHANGED = "account_changed"
    ACCOUNT_GROUPS_CHANGED = "account_groups_changed"
    ACCOUNT_BULK_CHANGED = "account_bulk_changed"
    GROUP_CHANGED = "group_changed"
    FULL_REBUILD = "full_rebuild"
    ACCOUNT_LAST_USED = "account_last_used"


class OutboxEvent(BaseModel):
    """One row of ``scheduler_outbox``."""

    model_config = ConfigDict(frozen=True)

    id: int
    event_type: str
    account_id: int | None = None
    group_id: int | None = None
    payload: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    # Why the row cannot be read (a payload that is not JSON): such an event is counted
    # and skipped as malformed, and the poller moves past it.
    error: str | None = None


class OutboxStats(BaseModel):
    """How big the outbox table is, for status views and retention."""

    model_config = ConfigDict(frozen=True)

    rows: int
    oldest_at: datetime | None

    def oldest_age_seconds(self, now: datetime) -> float | None:
        return None if self.oldest_at is None else (now - self.oldest_at).total_seconds()


class Group(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    platform: str
    status: str = "active"


class Source(Protocol):
    """What the tasks read from, and write last-use times to, in the source database."""

    def accounts_for_bucket(self, bucket: SchedulerBucket, now: datetime) -> list[Account]:
        """The bucket's candidate accounts in scheduling order.

        Candidates: active, schedulable, not paused for expiry at ``now``. Accounts held
        back only until a known time (rate limit, overload, temporary block) are
        included; readers filter them with ``Account.is_schedulable(now)``.
        """
        ...

    def get_accounts(self, account_ids: Iterable[int]) -> dict[int, Account]:
        """The named accounts that exist (not deleted), by id, with their group ids."""
        ...

    def deleted_revisions(self, account_ids: Iterable[int]) -> dict[int, int]:
        """The revisions of the named accounts that are deleted (soft-deleted rows).

        The cache keeps them as tombstones, so that a rebuild which read such an
        account just before its deletion cannot write it back.
        """
        ...

    def active_groups(self) -> list[Group]:
        """Active groups that have a platform: their buckets are kept warm."""
        ...

    def outbox_after(self, after_id: int, limit: int) -> list[OutboxEvent]:
        """Committed events with ``id > after_id``, lowest id first."""
        ...

    def outbox_by_ids(self, event_ids: Iterable[int]) -> list[OutboxEvent]:
        """The named events that are committed now, lowest id first."""
        ...

    def update_last_used(self, updates: Mapping[int, datetime]) -> int:
        """Move ``last_used_at`` forward (never back) for existing accounts, in one
        statement batch, without bumping their revision or writing outbox events."""
        ...


@runtime_checkable
class KnowsOrder(Protocol):
    """Optional: where an account goes in a bucket's snapshot order.

    With it, the outbox poller puts an account that joins a bucket (or whose priority
    changed) into the bucket's active version in place; without it, such a change
    takes a rebuild of the bucket, as every change used to.
    """

    def followers(self, bucket: SchedulerBucket, account_id: int, limit: int) -> list[int] | None:
        """The ids that follow ``account_id`` in ``bucket``'s scheduling order (the
        order of :meth:`Source.accounts_for_bucket`), nearest first, at most ``limit``;
        None when the account is not among the bucket's candidates now."""
        ...
