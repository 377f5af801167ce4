"""A gateway's verdict on an account: ``mark_unschedulable`` after a 429, an overload
or an auth failure.

The verdict is written to the source, durably, in the columns the scheduler already
honours (:meth:`cache.Account.is_schedulable`): a rate limit sets ``rate_limited_at``
and ``rate_limit_reset_at``, an overload ``overload_until``, anything else
``temp_unschedulable_until`` and its reason. The trigger writes the outbox row; the
poll is nudged at once. Until the change comes back through the cache the calling
process excludes the account itself, so its very next pick already avoids it::

    request 1: 429 from account 7 -> mark_unschedulable(7, until=reset, reason=...)
    request 2 (same process, 1 ms later): list_schedulable -> 7 left out (local mark)
    ~0.3 s later: the snapshot's payload of 7 carries the block; the mark is dropped
    at reset: 7 is schedulable again, from the cache's own data, with no event

A block is never shortened by a later, shorter verdict: each column keeps the later time.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from cache import Account, brief, check_account_id
from tasks import runtime

# Reasons that name a column of their own; any other reason is a temporary block.
RATE_LIMITED = "rate_limited"
OVERLOADED = "overloaded"
# How long a block lasts when the caller does not know (an auth failure, say): long
# enough to stop a burst of failing requests, short enough that a false alarm is cheap.
DEFAULT_BLOCK = timedelta(seconds=60)
# A verdict further ahead than this is a bad clock or a unit mistake, not a block.
MAX_BLOCK = timedelta(days=30)
MAX_REASON_LENGTH = 200


@dataclass(frozen=True)
class Mark:
    until: datetime
    revision: int | None


_marks: dict[int, Mark] = {}
_lock = threading.Lock()


def mark_unschedulable(
    account_id: int,
    *,
    until: datetime | None = None,
    reason: str = "temporarily unschedulable",
    now: datetime | None = None,
) -> Account:
    """Record that ``account_id`` may not be picked before ``until`` (default: a
    minute from now); returns the account as written. ``reason`` ``"rate_limited"``
    and ``"overloaded"`` set those columns; any other is kept as the block's reason.

    Raises ``ValueError`` naming a bad id, time or reason (nothing written), and
    :class:`tasks.source.AccountNotFound` for an account that does not exist.
    """
    account_id, until, reason = _checked(account_id, until, reason, now)
    from tasks.source.reader import SqlSource
    from tasks.source.writer import SqlWriter
    from tasks.worker.wakeup import poll_nudger

    source = runtime.get_source()
    if not isinstance(source, SqlSource):
        raise TypeError(f"mark_unschedulable needs the SQL source, not {type(source).__name__}")
    nudger = poll_nudger(runtime.settings().outbox_wakeup_window_seconds)
    account = SqlWriter(source, on_commit=nudger.nudge).update_account(
        account_id, **_changes(until, reason, now or datetime.now(UTC))
    )
    with _lock:
        _marks[account_id] = Mark(until, account.revision)
    return account


async def mark_unschedulable_async(
    account_id: int,
    *,
    until: datetime | None = None,
    reason: str = "temporarily unschedulable",
    now: datetime | None = None,
) -> Account:
    """As :func:`mark_unschedulable`, awaited (the database write runs in a thread)."""
    return await asyncio.to_thread(
        mark_unschedulable, account_id, until=until, reason=reason, now=now
    )


def without_marked(accounts: Sequence[Account], now: datetime) -> Sequence[Account]:
    """``accounts`` less those this process marked, until the cache shows the mark
    (a revision at least the marked one) or the mark's time has passed."""
    if not _marks:
        return accounts
    kept = []
    with _lock:
        for account in accounts:
            mark = _marks.get(account.id)
            if mark is None:
                kept.append(account)
            elif mark.until <= now or _caught_up(account, mark):
                del _marks[account.id]
                kept.append(account)
    return kept


def marked(now: datetime) -> frozenset[int]:
    """The accounts this process marked whose mark still holds at ``now``: a pick leaves
    them out until then (what the cache shows of them is unschedulable until then too,
    once the mark has arrived)."""
    if not _marks:
        return frozenset()
    with _lock:
        for account_id in [i for i, mark in _marks.items() if mark.until <= now]:
            del _marks[account_id]
        return frozenset(_marks)


def forget_marks() -> None:
    """Drop every mark of this process (its source or cache was replaced)."""
    with _lock:
        _marks.clear()


def _caught_up(account: Account, mark: Mark) -> bool:
    if account.revision is None or mark.revision is None:
        return False
    return account.revision >= mark.revision


def _checked(
    account_id: object, until: object, reason: object, now: datetime | None
) -> tuple[int, datetime, str]:
    account_id = check_account_id(account_id)
    at = now or datetime.now(UTC)
    if until is None:
        until = at + DEFAULT_BLOCK
    if not isinstance(until, datetime):
        raise ValueError(f"invalid until {brief(until)} for account {account_id}: not a datetime")
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    if until <= at:
        raise ValueError(f"until {until.isoformat()} for account {account_id} has passed already")
    if until > at + MAX_BLOCK:
        raise ValueError(
            f"until {until.isoformat()} for account {account_id} is more than {MAX_BLOCK.days} "
            "days ahead"
        )
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_LENGTH:
        raise ValueError(
            f"invalid reason {brief(reason)} for account {account_id}: expected text of 1 to "
            f"{MAX_REASON_LENGTH} characters"
        )
    return account_id, until, reason


def _later(column: str, until: datetime) -> Any:
    """``until``, unless the column holds a later time already."""
    from tasks.source.schema import accounts

    current = accounts.c[column]
    value = sa.literal(until, current.type)
    return sa.case((current.is_(None) | (current < value), value), else_=current)


def _changes(until: datetime, reason: str, now: datetime) -> dict[str, Any]:
    if reason == RATE_LIMITED:
        return {"rate_limited_at": now, "rate_limit_reset_at": _later("rate_limit_reset_at", until)}
    if reason == OVERLOADED:
        return {"overload_until": _later("overload_until", until)}
    return {
        "temp_unschedulable_until": _later("temp_unschedulable_until", until),
        "temp_unschedulable_reason": reason,
    }
