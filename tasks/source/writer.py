"""Write helpers of the SQL source, for tests, the demo and admin applications.

The triggers write the outbox events of table changes (:mod:`tasks.source.capture`), in
the same transaction: a change that fails (a bad value, a missing account) rolls back
and leaves no event, and an event is never visible without its change. Each helper asks
them for one event per account, however many rows it touches. Only the events with no
table change behind them (a full rebuild, the original's last-use batches) are written
here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from cache import Account
from cache.models import validate_token
from tasks.source.capture import close_capture, open_capture
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
    """Changes to accounts and groups (their outbox events by the triggers), written through the
    connections of a :class:`SqlSource` (whose decoded-row cache stays consistent: it
    only ever holds committed states)."""

    def __init__(self, source: SqlSource, *, on_commit: Callable[[], object] | None = None) -> None:
        """``on_commit``: called after each change commits, e.g. a nudge that sends
        the outbox poll at once (:mod:`tasks.worker.wakeup`): what SQLite, with no
        notifications, has instead of PostgreSQL's wake-up on commit."""
        self.source = source
        self.store = source
        self.on_commit = on_commit

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
        with self._change("create_account") as conn:
            result = conn.execute(accounts.insert().values(**fields))
            account_id = inserted_id(result)
            if "id" in fields:
                self._catch_up_sequence(conn, accounts)
            self._set_memberships(conn, account_id, memberships)
            return self._load_one(conn, account_id)

    def update_account(self, account_id: int, **changes: Any) -> Account:
        """Change an account's fields; its revision grows (by the trigger)."""
        check_fields(changes, ACCOUNT_FIELDS, "account")
        if not changes:
            raise ValueError(f"update_account({account_id!r}) was given no changes")
        account_id = as_account_id(account_id)
        with self._change("update_account") as conn:
            result = conn.execute(
                accounts.update()
                .where(accounts.c.id == account_id, accounts.c.deleted_at.is_(None))
                .values(**changes)
            )
            if result.rowcount == 0:
                raise AccountNotFound(f"account {account_id} does not exist or is deleted")
            return self._load_one(conn, account_id)

    def delete_account(self, account_id: int) -> bool:
        """Soft-delete an account; False (and no event) when it was deleted already."""
        account_id = as_account_id(account_id)
        with self._change("delete_account") as conn:
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
        return True

    def set_account_groups(
        self, account_id: int, memberships: Mapping[int, int] | Iterable[int]
    ) -> Account:
        """Replace the account's groups with ``{group_id: membership priority}``.

        Only the memberships that differ are written, so the event names just the groups
        the account left, joined or changed its priority in (and group 0 when it joins
        its first group or leaves its last); no change, no event.
        """
        account_id = as_account_id(account_id)
        new = _memberships_arg(memberships)
        with self._change("set_account_groups") as conn:
            self._load_one(conn, account_id)
            old = dict(
                conn.execute(
                    sa.select(account_groups.c.group_id, account_groups.c.priority).where(
                        account_groups.c.account_id == account_id
                    )
                ).all()
            )
            # Joins before leaves: a move between groups never passes through "no group"
            # (group 0), which would name group 0 in the event.
            joined = {g: p for g, p in new.items() if g not in old}
            self._set_memberships(conn, account_id, joined)
            left = sorted(set(old) - set(new))
            if left:
                conn.execute(
                    account_groups.delete().where(
                        account_groups.c.account_id == account_id,
                        account_groups.c.group_id.in_(left),
                    )
                )
            for group_id, priority in sorted(new.items()):
                if group_id in old and old[group_id] != priority:
                    conn.execute(
                        account_groups.update()
                        .where(
                            account_groups.c.account_id == account_id,
                            account_groups.c.group_id == group_id,
                        )
                        .values(priority=priority)
                    )
            return self._load_one(conn, account_id)

    def bulk_update_accounts(self, account_ids: Iterable[int], **changes: Any) -> int:
        """Change the same fields of many accounts in one transaction (an event per
        account whose row changed: the poller folds a batch of them into one plan).

        Returns how many (not deleted) accounts matched.
        """
        check_fields(changes, ACCOUNT_FIELDS, "account")
        if not changes:
            raise ValueError("bulk_update_accounts was given no changes")
        ids = sorted({as_account_id(i) for i in account_ids})
        with self._change("bulk_update_accounts") as conn:
            changed: list[int] = []
            for part in chunks(ids):
                result = conn.execute(
                    accounts.update()
                    .where(accounts.c.id.in_(part), accounts.c.deleted_at.is_(None))
                    .values(**changes)
                    .returning(accounts.c.id)
                )
                changed.extend(result.scalars())
            if changed:
                # Validates the new values: a bad one rolls the whole change back.
                self.store.load_accounts(conn, sorted(changed), strict=True)
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
        with self._change("record_last_used_event") as conn:
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
        with self._change("create_group") as conn:
            group_id = inserted_id(conn.execute(groups.insert().values(**values)))
            if id is not None:
                self._catch_up_sequence(conn, groups)
        return Group(id=group_id, name=name, platform=platform, status=status)

    def update_group(self, group_id: int, **changes: Any) -> Group:
        """Change a group; a new platform or status writes an event naming its old and
        new platform (a new name alone schedules nothing differently: no event)."""
        check_fields(changes, GROUP_FIELDS, "group")
        if not changes:
            raise ValueError(f"update_group({group_id!r}) was given no changes")
        if "platform" in changes:
            validate_token(changes["platform"], "group platform")
        group_id = as_account_id(group_id)
        with self._change("update_group") as conn:
            result = conn.execute(
                groups.update()
                .where(groups.c.id == group_id)
                .values(**changes, updated_at=self.store.clock())
            )
            if result.rowcount == 0:
                raise GroupNotFound(f"group {group_id} does not exist")
            after = conn.execute(sa.select(groups).where(groups.c.id == group_id)).one()
        return Group(
            id=after.id, name=after.name, platform=after.platform or "", status=after.status
        )

    def request_full_rebuild(self) -> int:
        """Ask the pollers to rebuild every bucket; returns the event id."""
        with self._change("request_full_rebuild") as conn:
            return self.store.emit(conn, OutboxEventType.FULL_REBUILD)

    @contextmanager
    def _change(self, action: str) -> Iterator[Connection]:
        """A write transaction whose triggers write one event per account."""
        with self.store.write(action) as conn:
            open_capture(conn)
            yield conn
            close_capture(conn)
        if self.on_commit is not None:
            self.on_commit()

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
