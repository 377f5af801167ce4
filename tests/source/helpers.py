"""Small helpers for the source tests: plain SQL, as another application would write it."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from tasks.source import OutboxEvent, SqlSource


def sql(source: SqlSource, statement: str, **params: Any) -> list[Any]:
    """Run one plain SQL statement in its own transaction; rows if it returns any."""
    with source.engine.begin() as conn:
        result = conn.execute(sa.text(statement), params)
        return list(result.all()) if result.returns_rows else []


def revision(source: SqlSource, account_id: int) -> int:
    return int(sql(source, "SELECT revision FROM accounts WHERE id = :id", id=account_id)[0][0])


def events_after(source: SqlSource, after_id: int) -> list[OutboxEvent]:
    return source.outbox_after(after_id, 1000)
