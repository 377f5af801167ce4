"""Connections, shared queries and the write helpers of the SQL source.

Every helper writes its outbox event in the same transaction as its change: a change
that fails (a bad value, a missing account) rolls back and leaves no event, and an
event is never visible without its change.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Connection, Engine, Row

from cache import Account
from cache.models import validate_token
from tasks.db import (
    SourceError,
    account_groups,
    accounts,
    as_engine,
    db_errors,
    groups,
    mask_url,
    scheduler_outbox,
    writing,
)
from tasks.source import Group, OutboxEventType

logger = logging.getLogger(__name__)

# Bound parameters per IN list: far below every SQLite build's variable limit.
CHUNK = 500

ACCOUNT_COLUMNS = tuple(accounts.c[name] for name in Account.model_fields if name != "group_ids")
# What callers may set; id only on create, revision and timestamps belong to the trigger.
ACCOUNT_FIELDS = frozenset(c.name for c in ACCOUNT_COLUMNS) - {"id", "revision"}
GROUP_FIELDS = frozenset({"name", "platform", "status"})


class AccountNotFound(SourceError, LookupError):
    """No such account, or it is deleted."""


class GroupNotFound(SourceError, LookupError):
    """No such group."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def chunks(values: Sequence[int], size: int = CHUNK) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def as_account_id(value: object) -> int:
    """``value`` as an id (an int > 0, or its decimal string as JSON keys carry it)."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"invalid id {value!r}: expected an integer > 0")
    return value


def check_fields(given: Iterable[str], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}: expected some of {sorted(allowed)}")


def inserted_id(result: sa.CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    if key is None:  # only for statements that insert no row, never ours
        raise SourceError("insert returned no primary key")
    return int(key[0])


def to_account(row: Row[Any], group_ids: Iterable[int]) -> Account:
    data = dict(row._mapping)
    data["group_ids"] = tuple(sorted(group_ids))
    return Account.model_validate(data)


def valid_accounts(
    rows: Iterable[Row[Any]], memberships: Mapping[int, list[int]]
) -> Iterator[Account]:
    """Rows as accounts; a row another application wrote badly is logged and skipped,
    so one bad row cannot stop every rebuild of its buckets."""
    for row in rows:
        try:
            yield to_account(row, memberships.get(row.id, ()))
        except ValidationError as exc:
            logger.error("skipping account %s: invalid row: %s", row.id, exc)


class SqlStore:
    """The engine, transactions and shared queries, plus the write helpers."""

    def __init__(
        self,
        engine_or_url: str | sa.URL | Engine,
        *,
        mixed_platforms: Iterable[str] = ("anthropic", "gemini"),
        donor_platform: str = "antigravity",
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.engine = as_engine(engine_or_url)
        self.mixed_platforms = frozenset(mixed_platforms)
        self.donor_platform = donor_platform
        self.clock = clock
        self._postgres = self.engine.dialect.name == "postgresql"
        self._writer = writing(self.engine)
        # One snapshot for an account query and its membership query on PostgreSQL;
        # SQLite's read transaction is a snapshot already.
        self._reader = (
            self.engine.execution_options(isolation_level="REPEATABLE READ")
            if self._postgres
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
    def _read(self, action: str) -> Iterator[Connection]:
        with db_errors(self.engine, action), self._reader.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self, action: str) -> Iterator[Connection]:
        with db_errors(self.engine, action), self._writer.begin() as conn:
            yield conn

    # -- accounts --------------------------------------------------------------------
    def create_account(self, **fields: Any) -> Account:
        """Insert an account (``group_ids``: a list, or ``{group_id: priority}``)."""
        memberships = _memberships_arg(fields.pop("group_ids", ()))
        check_fields(fields, ACCOUNT_FIELDS | {"id"}, "account")
        missing = sorted({"name", "platform", "type"} - set(fields))
        if missing:
            raise ValueError(f"create_account needs {missing}")
        with self._write("create_account") as conn:
            result = conn.execute(accounts.insert().values(**fields))
            account_id = inserted_id(result)
            if "id" in fields:
                self._catch_up_sequence(conn, accounts)
            self._set_memberships(conn, account_id, memberships)
            account = self._load_one(conn, account_id)
            self._account_changed(conn, account)
        return account

    def update_account(self, account_id: int, **changes: Any) -> Account:
        """Change an account's fields; its revision grows (by the trigger)."""
        check_fields(changes, ACCOUNT_FIELDS, "account")
        if not changes:
            raise ValueError(f"update_account({account_id!r}) was given no changes")
        account_id = as_account_id(account_id)
        with self._write("update_account") as conn:
            result = conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id, accounts.c.deleted_at.is_(None))
                .values(**changes)
            )
            if result.rowcount == 0:
                raise AccountNotFound(f"account {account_id} does not exist or is deleted")
            account = self._load_one(conn, account_id)
            self._account_changed(conn, account)
        return account

    def delete_account(self, account_id: int) -> bool:
        """Soft-delete an account; False (and no event) when it was deleted already."""
        account_id = as_account_id(account_id)
        with self._write("delete_account") as conn:
            row = conn.execute(
                sa.select(accounts.c.deleted_at).where(accounts.c.id == account_id)
            ).first()
            if row is None:
                raise AccountNotFound(f"account {account_id} does not exist")
            if row.deleted_at is not None:
                return False
            conn.execute(
                accounts.update().where(accounts.c.id == account_id).values(deleted_at=self.clock())
            )
            group_ids = sorted(self._memberships(conn, [account_id]).get(account_id, []))
            self._emit(
                conn, OutboxEventType.ACCOUNT_CHANGED, account_id=account_id,
                payload={"group_ids": group_ids},
            )
        return True

    def set_account_groups(
        self, account_id: int, memberships: Mapping[int, int] | Iterable[int]
    ) -> Account:
        """Replace the account's groups with ``{group_id: membership priority}``.

        The event names every group the account left or joined; it adds group 0 when
        the account joins its first group or leaves its last, since that moves it into
        or out of the "no group" buckets.
        """
        account_id = as_account_id(account_id)
        new = _memberships_arg(memberships)
        with self._write("set_account_groups") as conn:
            self._load_one(conn, account_id)
            old = set(self._memberships(conn, [account_id]).get(account_id, []))
            conn.execute(account_groups.delete().where(account_groups.c.account_id == account_id))
            self._set_memberships(conn, account_id, new)
            affected = old | set(new)
            if affected and not (old and new):
                affected.add(0)
            account = self._load_one(conn, account_id)
            self._emit(
                conn, OutboxEventType.ACCOUNT_GROUPS_CHANGED, account_id=account_id,
                payload={"group_ids": sorted(affected)},
            )
        return account

    def bulk_update_accounts(self, account_ids: Iterable[int], **changes: Any) -> int:
        """Change the same fields of many accounts in one transaction and one event.

        Returns how many (not deleted) accounts changed; no event when none did.
        """
        check_fields(changes, ACCOUNT_FIELDS, "account")
        if not changes:
            raise ValueError("bulk_update_accounts was given no changes")
        ids = sorted({as_account_id(i) for i in account_ids})
        with self._write("bulk_update_accounts") as conn:
            changed: list[int] = []
            for part in chunks(ids):
                result = conn.execute(
                    accounts.update()
                    .where(accounts.c.id.in_(part), accounts.c.deleted_at.is_(None))
                    .values(**changes)
                    .returning(accounts.c.id)
                )
                changed.extend(result.scalars())
            if not changed:
                return 0
            changed.sort()
            loaded = self._load_accounts(conn, changed, strict=True)
            group_ids = {g for account in loaded.values() for g in account.group_ids}
            if any(not account.group_ids for account in loaded.values()):
                group_ids.add(0)
            self._emit(
                conn, OutboxEventType.ACCOUNT_BULK_CHANGED,
                payload={"account_ids": changed, "group_ids": sorted(group_ids)},
            )
        return len(changed)

    def record_last_used_event(self, updates: Mapping[int, datetime]) -> int | None:
        """Write last-use times the way the original gateway does: the column (forward
        only) and an ``account_last_used`` event, in one transaction.

        Returns the event id, None for an empty batch.
        """
        batch = self._last_used_batch(updates)
        if not batch:
            return None
        seconds = {
            str(item["b_id"]): round(item["b_at"].timestamp(), 3) for item in batch
        }
        with self._write("record_last_used_event") as conn:
            self._apply_last_used(conn, batch)
            return self._emit(
                conn, OutboxEventType.ACCOUNT_LAST_USED, payload={"last_used": seconds}
            )

    # -- groups ----------------------------------------------------------------------
    def create_group(
        self, name: str, platform: str, *, status: str = "active", id: int | None = None
    ) -> Group:
        validate_token(platform, "group platform")
        values: dict[str, Any] = {"name": name, "platform": platform, "status": status}
        if id is not None:
            values["id"] = as_account_id(id)
        with self._write("create_group") as conn:
            group_id = inserted_id(conn.execute(groups.insert().values(**values)))
            if id is not None:
                self._catch_up_sequence(conn, groups)
            self._emit(
                conn, OutboxEventType.GROUP_CHANGED, group_id=group_id,
                payload={"platforms": [platform]},
            )
        return Group(id=group_id, name=name, platform=platform, status=status)

    def update_group(self, group_id: int, **changes: Any) -> Group:
        """Change a group; the event names its old and new platform."""
        check_fields(changes, GROUP_FIELDS, "group")
        if not changes:
            raise ValueError(f"update_group({group_id!r}) was given no changes")
        if "platform" in changes:
            validate_token(changes["platform"], "group platform")
        group_id = as_account_id(group_id)
        with self._write("update_group") as conn:
            before = conn.execute(sa.select(groups).where(groups.c.id == group_id)).first()
            if before is None:
                raise GroupNotFound(f"group {group_id} does not exist")
            conn.execute(
                groups.update()
                .where(groups.c.id == group_id)
                .values(**changes, updated_at=self.clock())
            )
            after = conn.execute(sa.select(groups).where(groups.c.id == group_id)).one()
            platforms = sorted({p for p in (before.platform, after.platform) if p})
            self._emit(
                conn, OutboxEventType.GROUP_CHANGED, group_id=group_id,
                payload={"platforms": platforms},
            )
        return Group(
            id=after.id, name=after.name, platform=after.platform or "", status=after.status
        )

    def request_full_rebuild(self) -> int:
        """Ask the pollers to rebuild every bucket; returns the event id."""
        with self._write("request_full_rebuild") as conn:
            return self._emit(conn, OutboxEventType.FULL_REBUILD)

    # -- shared queries --------------------------------------------------------------
    def _emit(
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

    def _account_changed(self, conn: Connection, account: Account) -> None:
        self._emit(
            conn, OutboxEventType.ACCOUNT_CHANGED, account_id=account.id,
            payload={"group_ids": list(account.group_ids)},
        )

    def _set_memberships(self, conn: Connection, account_id: int, new: Mapping[int, int]) -> None:
        if not new:
            return
        known = set(
            conn.execute(sa.select(groups.c.id).where(groups.c.id.in_(sorted(new)))).scalars()
        )
        unknown = sorted(set(new) - known)
        if unknown:
            raise ValueError(f"unknown group id(s) {unknown} for account {account_id}")
        conn.execute(
            account_groups.insert(),
            [
                {"account_id": account_id, "group_id": g, "priority": p}
                for g, p in sorted(new.items())
            ],
        )

    def _catch_up_sequence(self, conn: Connection, table: sa.Table) -> None:
        # An explicit id does not advance PostgreSQL's serial sequence; without this the
        # next insert without an id would collide with it. (SQLite uses max(rowid).)
        if self._postgres:
            conn.execute(
                sa.text(
                    "SELECT setval(pg_get_serial_sequence(:table, 'id'),"
                    f" (SELECT GREATEST(MAX(id), 1) FROM {table.name}))"
                ),
                {"table": table.name},
            )

    def _load_one(self, conn: Connection, account_id: int) -> Account:
        found = self._load_accounts(conn, [account_id], strict=True)
        if account_id not in found:
            raise AccountNotFound(f"account {account_id} does not exist or is deleted")
        return found[account_id]

    def _load_accounts(
        self, conn: Connection, ids: Sequence[int], *, strict: bool = False
    ) -> dict[int, Account]:
        """Not-deleted accounts by id. ``strict``: an invalid row raises (writers roll
        back on it) instead of being skipped."""
        memberships = self._memberships(conn, ids)
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

    def _memberships(self, conn: Connection, ids: Sequence[int]) -> dict[int, list[int]]:
        found: dict[int, list[int]] = defaultdict(list)
        for part in chunks(ids):
            query = sa.select(account_groups.c.account_id, account_groups.c.group_id).where(
                account_groups.c.account_id.in_(part)
            )
            for account_id, group_id in conn.execute(query):
                found[account_id].append(group_id)
        return found

    def _last_used_batch(self, updates: Mapping[int, datetime]) -> list[dict[str, Any]]:
        batch: list[dict[str, Any]] = []
        for key, at in updates.items():
            if not isinstance(at, datetime):
                raise ValueError(f"invalid last-used time {at!r} for account {key!r}")
            batch.append({"b_id": as_account_id(key), "b_at": at})
        # One lock order for every batch: two overlapping batches cannot deadlock.
        batch.sort(key=lambda item: item["b_id"])
        return batch

    def _apply_last_used(self, conn: Connection, batch: list[dict[str, Any]]) -> int:
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


def _memberships_arg(value: Mapping[int, int] | Iterable[int]) -> dict[int, int]:
    """``{group_id: priority}`` from a mapping, or from ids with the default priority."""
    pairs = list(value.items()) if isinstance(value, Mapping) else [(g, 50) for g in value]
    result = {}
    for group_id, priority in pairs:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"invalid priority {priority!r} for group {group_id!r}")
        result[as_account_id(group_id)] = priority
    return result
