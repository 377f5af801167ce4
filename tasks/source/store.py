"""The SQL source's engine, transactions and the queries its reads and writes share."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeAlias

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Connection, Engine, Row

from cache import Account, brief, check_account_id
from tasks.buckets import BucketRules
from tasks.source.engine import as_engine, db_errors, mask_url, writing
from tasks.source.errors import SourceError
from tasks.source.protocol import OutboxEventType
from tasks.source.schema import account_groups, accounts, scheduler_outbox, stored_utc

logger = logging.getLogger(__name__)

AnyRow: TypeAlias = Row[*tuple[Any, ...]]

# Bound parameters per IN list: far below every SQLite build's variable limit.
CHUNK = 500

# Decoded accounts kept for reuse; past this many the memory is given back at once.
MAX_DECODED = 50_000

ACCOUNT_COLUMNS = tuple(accounts.c[name] for name in Account.model_fields if name != "group_ids")
# What identifies one decoded state of an account row: the triggers bump the revision on
# every change of every other column and of its memberships, and created_at tells a row
# from an earlier one with the same id (a database rebuilt under a running worker).
# last_used_at changes without a revision and is patched in, not decoded again. The
# times are compared as stored, so an unchanged row costs no datetime parsing.
IDENTITY_COLUMNS = (
    accounts.c.id,
    accounts.c.revision,
    sa.type_coerce(accounts.c.created_at, sa.types.NULLTYPE).label("created_at"),
    sa.type_coerce(accounts.c.last_used_at, sa.types.NULLTYPE).label("last_used_at"),
)
# (revision, created_at, last_used_at) as stored, and the account decoded from them.
Decoded: TypeAlias = tuple[int, object, object, Account]


def utc_now() -> datetime:
    return datetime.now(UTC)


def chunks(values: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def as_account_id(value: object) -> int:
    """``value`` as an id (an int > 0, or its decimal string as JSON keys carry it), in
    the range every part of the system shares (:func:`cache.check_account_id`)."""
    return check_account_id(value)


def inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:  # only for statements that insert no row, never ours
        raise SourceError("insert returned no primary key")
    return int(key[0])


def to_account(row: AnyRow, group_ids: Iterable[int]) -> Account:
    data = dict(row._mapping)
    data["group_ids"] = tuple(sorted(group_ids))
    return Account.model_validate(data)


def valid_accounts(
    rows: Iterable[AnyRow], memberships: Mapping[int, list[int]]
) -> Iterator[Account]:
    """Rows as accounts; a row another application wrote badly is logged and skipped,
    so one bad row cannot stop every rebuild of its buckets."""
    for row in rows:
        try:
            yield to_account(row, memberships.get(row.id, ()))
        except ValidationError as exc:
            logger.error("skipping account %s: invalid row: %s", row.id, exc)


class SqlStore:
    """The engine, transactions and the queries reads and writes share."""

    def __init__(
        self,
        engine_or_url: str | sa.URL | Engine,
        *,
        mixed_platforms: Iterable[str] = ("anthropic", "gemini"),
        donor_platform: str = "antigravity",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = as_engine(engine_or_url)
        # Which mixed buckets take donor accounts (tasks.buckets): the settings'
        # platforms are not needed to read a bucket.
        self.rules = BucketRules(
            mixed_platforms=frozenset(mixed_platforms), mixed_donor_platform=donor_platform
        )
        self.clock = clock
        self.postgres = self.engine.dialect.name == "postgresql"
        # Committed states only, never one seen inside a write that may roll back.
        self._decoded: dict[int, Decoded] = {}
        self._writer = writing(self.engine)
        # One snapshot for an account query and its membership query on PostgreSQL;
        # SQLite's read transaction is a snapshot already.
        self._reader = (
            self.engine.execution_options(isolation_level="REPEATABLE READ")
            if self.postgres
            else self.engine
        )

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return mask_url(self.engine.url)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def read(self, action: str) -> Iterator[Connection]:
        with db_errors(self.engine, action), self._reader.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def write(self, action: str) -> Iterator[Connection]:
        with db_errors(self.engine, action), self._writer.begin() as conn:
            yield conn

    # -- shared queries --------------------------------------------------------------
    def emit(
        self,
        conn: Connection,
        event_type: OutboxEventType,
        *,
        account_id: int | None = None,
        group_id: int | None = None,
        payload: dict[str, Any] | None = None,
    ) -> int:
        result = conn.execute(
            scheduler_outbox.insert().values(
                event_type=event_type.value,
                account_id=account_id,
                group_id=group_id,
                payload=payload or {},
            )
        )
        return inserted_id(result)

    def _reuse(self, row: AnyRow) -> Account | None:
        """The decoded account for an identity row, if this state was decoded before."""
        account_id, revision, created_at, last_used_at = row
        known = self._decoded.get(account_id)
        if known is None or known[0] != revision or known[1] != created_at:
            return None
        account = known[3]
        if known[2] != last_used_at:
            # Only the per-request touch moved: no need to decode the row again.
            account = account.model_copy(update={"last_used_at": stored_utc(last_used_at)})
            self._decoded[account_id] = (revision, created_at, last_used_at, account)
        return account

    def _remember(self, rows: Iterable[AnyRow], found: Mapping[int, Account]) -> None:
        """Keep accounts decoded in a read transaction (committed states only)."""
        if len(self._decoded) > MAX_DECODED:
            self._decoded.clear()
        for account_id, revision, created_at, last_used_at in rows:
            account = found.get(account_id)
            if account is not None:
                self._decoded[account_id] = (revision, created_at, last_used_at, account)

    def load_accounts(
        self, conn: Connection, ids: Sequence[int], *, strict: bool = False
    ) -> dict[int, Account]:
        """Not-deleted accounts by id. ``strict``: an invalid row raises (writers roll
        back on it) instead of being skipped."""
        memberships = self.memberships(conn, ids)
        found: dict[int, Account] = {}
        for part in chunks(ids):
            rows = conn.execute(
                sa.select(*ACCOUNT_COLUMNS).where(
                    accounts.c.id.in_(part), accounts.c.deleted_at.is_(None)
                )
            ).all()
            loaded: Iterable[Account] = (
                [to_account(row, memberships.get(row.id, ())) for row in rows]
                if strict
                else valid_accounts(rows, memberships)
            )
            found.update((account.id, account) for account in loaded)
        return found

    def memberships(self, conn: Connection, ids: Sequence[int]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = defaultdict(list)
        for part in chunks(ids):
            query = sa.select(account_groups.c.account_id, account_groups.c.group_id).where(
                account_groups.c.account_id.in_(part)
            )
            for account_id, group_id in conn.execute(query):
                found[account_id].append(group_id)
        return found

    def last_used_batch(self, updates: Mapping[int, datetime]) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        for key, at in updates.items():
            if not isinstance(at, datetime):
                raise ValueError(f"invalid last-used time {brief(at)} for account {brief(key)}")
            batch.append({"b_id": as_account_id(key), "b_at": at})
        # One lock order for every batch: two overlapping batches cannot deadlock.
        batch.sort(key=lambda item: item["b_id"])
        return batch

    def apply_last_used(self, conn: Connection, batch: list[dict[str, Any]]) -> int:
        at = sa.bindparam("b_at", type_=accounts.c.last_used_at.type)
        statement = (
            accounts.update()
            .where(
                accounts.c.id == sa.bindparam("b_id"),
                sa.or_(accounts.c.last_used_at.is_(None), accounts.c.last_used_at < at),
            )
            .values(last_used_at=at)
        )
        return int(conn.execute(statement, batch).rowcount)
