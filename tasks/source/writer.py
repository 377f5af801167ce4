"""Write helpers of the SQL source, for tests, the demo and admin applications.

Every helper writes its outbox event in the same transaction as its change: a change
that fails (a bad value, a missing account) rolls back and leaves no event, and an
event is never visible without its change.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cache import Account
from cache.models import validate_token
from tasks.source.errors import AccountNotFound, GroupNotFound
from tasks.source.protocol import Group, OutboxEventType
from tasks.source.reader import SqlSource
from tasks.source.schema import account_groups, accounts, groups
from tasks.source.store import ACCOUNT_COLUMNS, as_account_id, chunks, inserted_id

# What callers may set; id only on create, revision and timestamps belong to the trigger.
ACCOUNT_FIELDS = frozenset(c.name for c in ACCOUNT_COLUMNS) - {"id", "revision"}
GROUP_FIELDS = frozenset({"name", "platform", "status"})
# Membership priority when only group ids are given.
DEFAULT_MEMBERSHIP_PRIORITY = 50


def check_fields(given: Iterable[str], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}: expected some of {sorted(allowed)}")


class SqlWriter:
    """Changes to accounts and groups, each with its outbox event, written through the
    connections of a :class:`SqlSource` (whose decoded-row cache stays consistent: it
    only ever holds committed states)."""

    def __init__(self, source: SqlSource) -> None:
        self.source = source
        self.store = source

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source.url!r})"

    # -- accounts --------------------------------------------------------------------
    def create_account(self, **fields: Any) -> Account:
        """Insert an account (``group_ids``: a list, or ``{group_id: priority}``)."""
        memberships = _memberships_arg(fields.pop("group_ids", ()))
        check_fields(fields, ACCOUNT_FIELDS | {"id"}, "account")
        missing = sorted({"name", "platform", "type"} - set(fields))
        if missing:
            raise ValueError(f"create_account needs {missing}")
        with self.store.write("create_account") as conn:
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
        with self.store.write("update_account") as conn:
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
        with self.store.write("delete_account") as conn:
            row = conn.execute(
                sa.select(accounts.c.deleted_at).where(accounts.c.id == account_id)
            ).first()
            if row is None:
                raise AccountNotFound(f"account {account_id} does not exist")
            if row.deleted_at is not None:
                return False
            conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id)
                .values(deleted_at=self.store.clock())
            )
            group_ids = sorted(self.store.memberships(conn, [account_id]).get(account_id, []))
            self.store.emit(
                conn,
                OutboxEventType.ACCOUNT_CHANGED,
                account_id=account_id,
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
        with self.store.write("set_account_groups") as conn:
            self._load_one(conn, account_id)
            old = set(self.store.memberships(conn, [account_id]).get(account_id, []))
            conn.execute(account_groups.delete().where(account_groups.c.account_id == account_id))
            self._set_memberships(conn, account_id, new)
            affected = old | set(new)
            if affected and not (old and new):
                affected.add(0)
            account = self._load_one(conn, account_id)
            self.store.emit(
                conn,
                OutboxEventType.ACCOUNT_GROUPS_CHANGED,
                account_id=account_id,
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
        with self.store.write("bulk_update_accounts") as conn:
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
            loaded = self.store.load_accounts(conn, changed, strict=True)
            group_ids = {g for account in loaded.values() for g in account.group_ids}
            if any(not account.group_ids for account in loaded.values()):
                group_ids.add(0)
            self.store.emit(
                conn,
                OutboxEventType.ACCOUNT_BULK_CHANGED,
                payload={"account_ids": changed, "group_ids": sorted(group_ids)},
            )
        return len(changed)

    def record_last_used_event(self, updates: Mapping[int, datetime]) -> int | None:
        """Write last-use times the way the original gateway does: the column (forward
        only) and an ``account_last_used`` event, in one transaction.

        Returns the event id, None for an empty batch.
        """
        batch = self.store.last_used_batch(updates)
        if not batch:
            return None
        seconds = {str(item["b_id"]): round(item["b_at"].timestamp(), 3) for item in batch}
        with self.store.write("record_last_used_event") as conn:
            self.store.apply_last_used(conn, batch)
            return self.store.emit(
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
        with self.store.write("create_group") as conn:
            group_id = inserted_id(conn.execute(groups.insert().values(**values)))
            if id is not None:
                self._catch_up_sequence(conn, groups)
            self.store.emit(
                conn,
                OutboxEventType.GROUP_CHANGED,
                group_id=group_id,
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
        with self.store.write("update_group") as conn:
            before = conn.execute(sa.select(groups).where(groups.c.id == group_id)).first()
            if before is None:
                raise GroupNotFound(f"group {group_id} does not exist")
            conn.execute(
                groups.update()
                .where(groups.c.id == group_id)
                .values(**changes, updated_at=self.store.clock())
            )
            after = conn.execute(sa.select(groups).where(groups.c.id == group_id)).one()
            platforms = sorted({p for p in (before.platform, after.platform) if p})
            self.store.emit(
                conn,
                OutboxEventType.GROUP_CHANGED,
                group_id=group_id,
                payload={"platforms": platforms},
            )
        return Group(
            id=after.id, name=after.name, platform=after.platform or "", status=after.status
        )

    def request_full_rebuild(self) -> int:
        """Ask the pollers to rebuild every bucket; returns the event id."""
        with self.store.write("request_full_rebuild") as conn:
            return self.store.emit(conn, OutboxEventType.FULL_REBUILD)

    def _account_changed(self, conn: Connection, account: Account) -> None:
        self.store.emit(
            conn,
            OutboxEventType.ACCOUNT_CHANGED,
            account_id=account.id,
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
        if self.store.postgres:
            conn.execute(
                sa.text(
                    "SELECT setval(pg_get_serial_sequence(:table, 'id'),"
                    f" (SELECT GREATEST(MAX(id), 1) FROM {table.name}))"
                ),
                {"table": table.name},
            )

    def _load_one(self, conn: Connection, account_id: int) -> Account:
        found = self.store.load_accounts(conn, [account_id], strict=True)
        if account_id not in found:
            raise AccountNotFound(f"account {account_id} does not exist or is deleted")
        return found[account_id]


def _memberships_arg(value: Mapping[int, int] | Iterable[int]) -> dict[int, int]:
    """``{group_id: priority}`` from a mapping, or from ids with the default priority."""
    if isinstance(value, Mapping):
        pairs = list(value.items())
    else:
        pairs = [(g, DEFAULT_MEMBERSHIP_PRIORITY) for g in value]
    result = {}
    for group_id, priority in pairs:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValueError(f"invalid priority {priority!r} for group {group_id!r}")
        result[as_account_id(group_id)] = priority
    return result
