"""What one batch of outbox events asks for: accounts, groups and buckets, read from the
events' types and payloads, and the ids the batch skipped over.

Reading is kept apart from applying: a batch folds into one :class:`BatchPlan` (the
accounts to refresh, the groups to rebuild, last-use times), so a hundred events about
one account cost one refresh and one rebuild request per bucket, not a hundred.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from cache import MAX_ID, brief, check_account_id
from tasks.source.protocol import OutboxEvent, OutboxEventType

logger = logging.getLogger(__name__)

# The bounds every part of the system shares (cache.MAX_ID: what BIGINT holds).
AccountId = Annotated[int, Strict(), Field(gt=0, le=MAX_ID)]
GroupId = Annotated[int, Strict(), Field(ge=0, le=MAX_ID)]
UnixSeconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
_ACCOUNT_ID: TypeAdapter[int] = TypeAdapter(AccountId)
_GROUP_ID: TypeAdapter[int] = TypeAdapter(GroupId)
_SECONDS: TypeAdapter[float] = TypeAdapter(UnixSeconds)


class MalformedEvent(ValueError):
    """An outbox event this poller cannot read: logged with its id and skipped."""


# Lists and maps hold their items unchecked here: each item is checked on its own (see
# _kept), so one bad id drops itself and not the event around it.
class _AccountPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    account_id: AccountId | None = None
    group_ids: list[object] | None = None


class _BulkPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    account_ids: list[object] = Field(min_length=1)
    group_ids: list[object] | None = None


class _GroupPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    group_id: GroupId | None = None


class _LastUsedPayload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    last_used: dict[str, object]


@dataclass
class BatchPlan:
    """Everything a batch of events asks for, merged."""

    # account id -> groups whose buckets to rebuild; None: every group it was or is in.
    accounts: dict[int, frozenset[int] | None] = field(default_factory=dict)
    # Accounts named by bulk events: their buckets are rebuilt, not changed in place.
    bulk: set[int] = field(default_factory=set)
    # Accounts whose memberships changed: their place in a group's order may have moved.
    regrouped: set[int] = field(default_factory=set)
    groups: set[int] = field(default_factory=set)
    full_rebuild: bool = False
    last_used: dict[int, datetime] = field(default_factory=dict)
    event_ids: list[int] = field(default_factory=list)
    malformed: list[int] = field(default_factory=list)

    def add_account(self, account_id: int, groups: Iterable[int] | None) -> None:
        if groups is None:
            self.accounts[account_id] = None
            return
        # An empty list names "no group", which is group 0.
        named = frozenset(groups) or frozenset({0})
        if account_id not in self.accounts:
            self.accounts[account_id] = named
            return
        seen = self.accounts[account_id]
        if seen is not None:
            self.accounts[account_id] = seen | named

    def add_last_used(self, times: Mapping[int, datetime]) -> None:
        for account_id, at in times.items():
            seen = self.last_used.get(account_id)
            if seen is None or at > seen:
                self.last_used[account_id] = at

    @property
    def empty(self) -> bool:
        return not (self.accounts or self.groups or self.full_rebuild or self.last_used)


def plan_batch(events: Iterable[OutboxEvent]) -> BatchPlan:
    """Fold ``events`` (in id order) into one plan; malformed ones are logged and noted."""
    plan = BatchPlan()
    for event in events:
        try:
            add_event(plan, event)
        except MalformedEvent as exc:
            logger.error("skipping outbox event %d: %s", event.id, exc)
            plan.malformed.append(event.id)
        else:
            plan.event_ids.append(event.id)
    return plan


def add_event(plan: BatchPlan, event: OutboxEvent) -> None:
    """Add what ``event`` asks for to ``plan``; raise :class:`MalformedEvent`."""
    if event.error is not None:
        raise MalformedEvent(event.error)
    try:
        kind = OutboxEventType(event.event_type)
    except ValueError:
        raise MalformedEvent(f"unknown event type {brief(event.event_type)}") from None
    try:
        _ADDERS[kind](plan, event)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'payload'}: {err['msg']}"
            for err in exc.errors()
        )
        raise MalformedEvent(f"{kind} payload {brief(event.payload)}: {brief(problems)}") from None


def _account(plan: BatchPlan, event: OutboxEvent) -> None:
    payload = _AccountPayload.model_validate(event.payload)
    account_id = event.account_id if event.account_id is not None else payload.account_id
    if account_id is None:
        raise MalformedEvent("no account_id in the row or the payload")
    try:
        check_account_id(account_id)
    except ValueError as exc:
        raise MalformedEvent(str(exc)) from None
    plan.add_account(account_id, _groups(event, payload.group_ids))
    if event.event_type == OutboxEventType.ACCOUNT_GROUPS_CHANGED:
        plan.regrouped.add(account_id)


def _bulk(plan: BatchPlan, event: OutboxEvent) -> None:
    payload = _BulkPayload.model_validate(event.payload)
    account_ids = _kept(event, "account_ids", payload.account_ids, _ACCOUNT_ID)
    if not account_ids:
        raise MalformedEvent(f"no valid id in account_ids {brief(payload.account_ids)}")
    groups = _groups(event, payload.group_ids)
    for account_id in account_ids:
        plan.add_account(account_id, groups)
    plan.bulk.update(account_ids)


def _groups(event: OutboxEvent, raw: list[object] | None) -> list[int] | None:
    """The valid group ids of ``raw``; None (every group the account was or is in)
    when every id given was bad, since an empty list would name group 0 alone."""
    if raw is None:
        return None
    kept = _kept(event, "group_ids", raw, _GROUP_ID)
    return kept if kept or not raw else None


def _kept(
    event: OutboxEvent, field_name: str, raw: list[object], adapter: TypeAdapter[int]
) -> list[int]:
    """The items of ``raw`` the adapter accepts; each other one logged and dropped."""
    kept: list[int] = []
    for item in raw:
        try:
            kept.append(adapter.validate_python(item))
        except ValidationError:
            logger.warning(
                "outbox event %d: dropping invalid id %s from %s", event.id, brief(item), field_name
            )
    return kept


def _group(plan: BatchPlan, event: OutboxEvent) -> None:
    payload = _GroupPayload.model_validate(event.payload)
    group_id = event.group_id if event.group_id is not None else payload.group_id
    if group_id is None:
        raise MalformedEvent("no group_id in the row or the payload")
    if isinstance(group_id, bool) or not 0 <= group_id <= MAX_ID:
        raise MalformedEvent(f"invalid group id {brief(group_id)}")
    plan.groups.add(group_id)


def _full(plan: BatchPlan, event: OutboxEvent) -> None:
    plan.full_rebuild = True


def _last_used(plan: BatchPlan, event: OutboxEvent) -> None:
    payload = _LastUsedPayload.model_validate(event.payload)
    times: dict[int, datetime] = {}
    first_error = ""
    for raw_id, raw_seconds in payload.last_used.items():
        try:
            account_id = check_account_id(raw_id)
            seconds = _SECONDS.validate_python(raw_seconds)
            times[account_id] = datetime.fromtimestamp(seconds, UTC)
        except (ValidationError, ValueError, OverflowError, OSError):
            # One pair at fault: the others of the event still apply.
            problem = f"last use {brief(raw_seconds)} of account {brief(raw_id)}"
            first_error = first_error or problem
            logger.warning("outbox event %d: dropping invalid %s", event.id, problem)
    if first_error and not times:
        raise MalformedEvent(f"no valid pair in last_used, e.g. {first_error}")
    plan.add_last_used(times)


_ADDERS: dict[OutboxEventType, Callable[[BatchPlan, OutboxEvent], None]] = {
    OutboxEventType.ACCOUNT_CHANGED: _account,
    OutboxEventType.ACCOUNT_GROUPS_CHANGED: _account,
    OutboxEventType.ACCOUNT_BULK_CHANGED: _bulk,
    OutboxEventType.GROUP_CHANGED: _group,
    OutboxEventType.FULL_REBUILD: _full,
    OutboxEventType.ACCOUNT_LAST_USED: _last_used,
}


# -- ids not visible yet ------------------------------------------------------------------
# In-flight transactions leave holes of a few ids; a hole wider than this is a pruned
# outbox (a first poll of an old table) or a sequence moved by hand. Only its highest
# ids are kept as gaps, so a first poll does not look up millions of ids for a minute.
MAX_NEW_GAPS = 10_000


def missing_ids(watermark: int, top: int, seen: set[int]) -> list[int]:
    """Ids between ``watermark`` and ``top`` not in ``seen``: the highest
    :data:`MAX_NEW_GAPS` of them (the rest is logged as skipped)."""
    missing = (top - watermark - 1) - max(0, len(seen) - 1)
    if missing <= MAX_NEW_GAPS:
        return [i for i in range(watermark + 1, top) if i not in seen]
    kept: list[int] = []
    candidate = top - 1
    while len(kept) < MAX_NEW_GAPS:
        if candidate not in seen:
            kept.append(candidate)
        candidate -= 1
    logger.error(
        "outbox ids %d..%d skipped: %d ids missing between the watermark and id %d, more "
        "than an in-flight transaction leaves (a pruned outbox or a moved sequence); "
        "the %d highest are kept as gaps",
        watermark + 1,
        candidate,
        missing - MAX_NEW_GAPS,
        top,
        MAX_NEW_GAPS,
    )
    return kept[::-1]
