"""Accounts for the cache tests."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from cache import Account

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def account(account_id: int, **changes: Any) -> Account:
    fields: dict[str, Any] = {
        "id": account_id,
        "name": f"acct-{account_id}",
        "platform": "anthropic",
        "type": "oauth",
        "priority": 10,
        "revision": 1,
        "group_ids": (12,),
        "extra": {"max_sessions": 4},
    }
    fields.update(changes)
    return Account(**fields)


def accounts(count: int, start: int = 1, **changes: Any) -> list[Account]:
    return [account(i, **changes) for i in range(start, start + count)]
