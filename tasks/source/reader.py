"""The SQL source of truth the tasks read (:class:`tasks.source.Source`).

Write helpers live in :mod:`tasks.source.writer` (built on a reader), connections and
shared queries in :mod:`tasks.source.store`. Another application may also write plain
SQL: the triggers bump the revisions and write the outbox rows
(:mod:`tasks.source.capture`) whoever writes.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

import sqlalchemy as sa

from cache import Account, SchedulerBucket, SchedulerMode, brief
from tasks.buckets import donor_opts_in, platforms_read
from tasks.source.protocol import Group, KnowsOrder, OutboxEvent, OutboxStats, Source
from tasks.source.schema import account_groups, accounts, scheduler_outbox, stored_utc
from tasks.source.schema import groups as groups_table
from tasks.source.store import (
    ACCOUNT_COLUMNS,
    IDENTITY_COLUMNS,
    AnyRow,
    SqlStore,
    as_account_id,
    chunks,
    valid_accounts,
)

logger = logging.getLogger(__name__)


def to_event(row: AnyRow) -> OutboxEvent:
    """One row as an event; a payload that is not JSON makes an event that says so
    (:attr:`OutboxEvent.error`) instead of an error that would stop the whole batch."""
    payload = row.payload
    error = None
    if isinstance(payload, (str, bytes)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            error = f"payload is not JSON ({exc}): {brief(payload)}"
            payload = {}
    if not isinstance(payload, dict):
        # Written by hand as a list or a scalar: keep the event, flag the payload.
        logger.warning(
            "outbox event %s has a non-object payload %s; using {}", row.id, brief(payload)
        )
        payload = {}
    return OutboxEvent(
        id=row.id,
        event_type=row.event_type,
        account_id=row.account_id,
        group_id=row.group_id,
        payload=payload,
        created_at=row.created_at,
        error=error,
    )


# The payload as stored, decoded row by row in to_event: the JSON type would decode it
# while fetching, and one row written by hand with invalid JSON (SQLite stores text as
# it comes) would fail the whole batch, and every poll after it.
OUTBOX_COLUMNS = (
    *(column for column in scheduler_outbox.c if column.name != "payload"),
    sa.type_coerce(scheduler_outbox.c.payload, sa.Text).label("payload"),
)


_WANTED = sa.and_(
    accounts.c.deleted_at.is_(None),
    accounts.c.status == "active",
    accounts.c.schedulable == sa.true(),
    accounts.c.platform.in_(sa.bindparam("platforms", expanding=True)),
)


def _group_members(*columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
    return (
        sa.select(*columns)
        .join(account_groups, account_groups.c.account_id == accounts.c.id)
        .where(account_groups.c.group_id == sa.bindparam("group_id"), _WANTED)
        .order_by(account_groups.c.priority, accounts.c.priority, accounts.c.id)
    )


def _ungrouped(*columns: sa.ColumnElement[Any]) -> sa.Select[Any]:
    return (
        sa.select(*columns)
        .where(_WANTED, ~sa.exists().where(account_groups.c.account_id == accounts.c.id))
        .order_by(accounts.c.priority, accounts.c.id)
    )


# Built once: a rebuild pays for executing them, not for constructing them. The
# identity queries give the order; the whole-row ones serve a first read of a bucket.
GROUP_MEMBERS = _group_members(*IDENTITY_COLUMNS)
UNGROUPED = _ungrouped(*IDENTITY_COLUMNS)
GROUP_MEMBER_ROWS = _group_members(*ACCOUNT_COLUMNS)
UNGROUPED_ROWS = _ungrouped(*ACCOUNT_COLUMNS)

# Where one account stands in a bucket's order (its sort key, if it is a candidate), and
# the accounts after it: the same queries, from a key on, walking the same indexes.
_ONE = accounts.c.id == sa.bindparam("account_id")
GROUP_MEMBER_KEY = _group_members(account_groups.c.priority, accounts.c.priority).where(_ONE)
UNGROUPED_KEY = _ungrouped(accounts.c.priority).where(_ONE)
GROUP_MEMBERS_AFTER = (
    _group_members(accounts.c.id)
    .where(
        sa.tuple_(account_groups.c.priority, accounts.c.priority, accounts.c.id)
        > sa.tuple_(sa.bindparam("key_0"), sa.bindparam("key_1"), sa.bindparam("account_id"))
    )
    .limit(sa.bindparam("limit"))
)
UNGROUPED_AFTER = (
    _ungrouped(accounts.c.id)
    .where(
        sa.tuple_(accounts.c.priority, accounts.c.id)
        > sa.tuple_(sa.bindparam("key_0"), sa.bindparam("account_id"))
    )
    .limit(sa.bindparam("limit"))
)


class SqlSource(SqlStore):
    """:class:`tasks.source.Source` over SQLite or PostgreSQL (SQLAlchemy Core).

    ``mixed_platforms`` are the platforms whose ``mixed`` buckets also take accounts of
    ``donor_platform`` that opt in with ``extra.mixed_scheduling``.
    Failures to reach the database raise :class:`SourceUnavailable` (worth retrying);
    tables never created raise :class:`SchemaMissing`.
    """

    @classmethod
    def from_settings(cls, settings: Settings, database_url: str | None = None) -> Self:
        """The source ``settings`` describe (on another database with ``database_url``)."""
        return cls(
            database_url or settings.database_url,
            mixed_platforms=settings.mixed_platforms,
            donor_platform=settings.mixed_donor_platform,
        )

    # -- health ----------------------------------------------------------------------
    def ping(self) -> None:
        """Raise :class:`SourceUnavailable` (naming the masked URL) unless the database
        answers, and :class:`SchemaMissing` when its tables were never created."""
        with self.read("ping") as conn:
            conn.execute(sa.select(scheduler_outbox.c.id).limit(1))

    # -- the Source protocol ---------------------------------------------------------
    def accounts_for_bucket(self, bucket: SchedulerBucket, now: datetime) -> list[Account]:
        """The bucket's candidates in scheduling order.

        Group > 0: members by membership priority, account priority, id. Group 0:
        accounts in no group by priority, id. ``mixed`` adds donor accounts that opt in.
        Accounts held back only by a time window are included (readers filter them).

        The ordered ids come first with each row's identity; only rows whose state was
        not decoded before are read whole, so a rebuild after one change decodes one row.
        """
        platforms = platforms_read(bucket, self.rules)
        grouped = bucket.group_id != 0
        params = {"group_id": bucket.group_id, "platforms": platforms}
        with self.read(f"accounts_for_bucket {bucket}") as conn:
            identities = conn.execute(GROUP_MEMBERS if grouped else UNGROUPED, params).all()
            found: dict[int, Account] = {}
            missing: list[int] = []
            for row in identities:
                account = self._reuse(row)
                if account is None:
                    missing.append(row[0])
                else:
                    found[row[0]] = account
            if len(missing) * 2 > len(identities):
                # Mostly new: one more pass over the bucket beats id lists (same snapshot).
                rows = conn.execute(GROUP_MEMBER_ROWS if grouped else UNGROUPED_ROWS, params)
                memberships = self._memberships_of_group(conn, bucket.group_id) if grouped else {}
                fresh = {a.id: a for a in valid_accounts(rows, memberships)}
            elif missing:
                fresh = self.load_accounts(conn, sorted(missing))
            else:
                fresh = {}
        self._remember((row for row in identities if row[0] in fresh), fresh)
        found.update(fresh)
        result = []
        for row in identities:
            account = found.get(row[0])  # absent: an invalid row, logged when read
            if account is None or not account.is_candidate(now):
                continue
            if account.platform != bucket.platform and not donor_opts_in(account.extra):
                continue
            result.append(account)
        return result

    def followers(self, bucket: SchedulerBucket, account_id: int, limit: int) -> list[int] | None:
        """The ids after ``account_id`` in ``bucket``'s order (:meth:`accounts_for_bucket`),
        nearest first, at most ``limit``; None when it is not a candidate of the bucket.

        Read with the SQL filters only: a follower may still be left out of the
        snapshot (paused for expiry, a donor that does not opt in), which is why the
        caller asks for a few and uses the first one the snapshot lists.
        """
        grouped = bucket.group_id != 0
        params: dict[str, Any] = {
            "group_id": bucket.group_id,
            "platforms": platforms_read(bucket, self.rules),
            "account_id": as_account_id(account_id),
            "limit": limit,
        }
        with self.read(f"followers of {account_id} in {bucket}") as conn:
            key = conn.execute(GROUP_MEMBER_KEY if grouped else UNGROUPED_KEY, params).first()
            if key is None:
                return None
            params.update({f"key_{i}": value for i, value in enumerate(key)})
            after = conn.execute(GROUP_MEMBERS_AFTER if grouped else UNGROUPED_AFTER, params)
            return [int(row[0]) for row in after]

    def get_accounts(self, account_ids: Iterable[int]) -> dict[int, Account]:
        """The named accounts that exist and are not deleted, by id."""
        ids = sorted({as_account_id(i) for i in account_ids})
        if not ids:
            return {}
        with self.read("get_accounts") as conn:
            return self.load_accounts(conn, ids)

    def deleted_revisions(self, account_ids: Iterable[int]) -> dict[int, int]:
        """Revisions of the named accounts that are soft-deleted, by id."""
        ids = sorted({as_account_id(i) for i in account_ids})
        found: dict[int, int] = {}
        if not ids:
            return found
        with self.read("deleted_revisions") as conn:
            for part in chunks(ids):
                rows = conn.execute(
                    sa.select(accounts.c.id, accounts.c.revision).where(
                        accounts.c.id.in_(part), accounts.c.deleted_at.is_not(None)
                    )
                ).all()
                found.update({int(row.id): int(row.revision) for row in rows})
        return found

    def active_groups(self) -> list[Group]:
        """Active groups with a platform, by id. A platform that cannot name a bucket
        is logged and skipped rather than breaking every refresh."""
        query = (
            sa.select(groups_table)
            .where(groups_table.c.status == "active", groups_table.c.platform.is_not(None))
            .order_by(groups_table.c.id)
        )
        with self.read("active_groups") as conn:
            rows = conn.execute(query).all()
        result = []
        for row in rows:
            try:
                SchedulerBucket(row.id, row.platform, SchedulerMode.SINGLE)
            except ValueError as exc:
                logger.warning("skipping group %s: %s", row.id, exc)
                continue
            result.append(Group(id=row.id, name=row.name, platform=row.platform, status=row.status))
        return result

    def outbox_after(self, after_id: int, limit: int) -> list[OutboxEvent]:
        """Committed events with ``id > after_id``, lowest id first, at most ``limit``."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"invalid outbox limit {brief(limit)}: expected an integer >= 1")
        query = (
            sa.select(*OUTBOX_COLUMNS)
            .where(scheduler_outbox.c.id > after_id)
            .order_by(scheduler_outbox.c.id)
            .limit(limit)
        )
        with self.read("outbox_after") as conn:
            return [to_event(row) for row in conn.execute(query)]

    def outbox_by_ids(self, event_ids: Iterable[int]) -> list[OutboxEvent]:
        """The named events that are committed now, lowest id first."""
        ids = sorted({int(i) for i in event_ids})
        events: list[OutboxEvent] = []
        if not ids:
            return events
        with self.read("outbox_by_ids") as conn:
            for part in chunks(ids):
                query = sa.select(*OUTBOX_COLUMNS).where(scheduler_outbox.c.id.in_(part))
                events.extend(to_event(row) for row in conn.execute(query))
        return sorted(events, key=lambda event: event.id)

    def max_outbox_id(self) -> int:
        """The highest committed outbox id, 0 for an empty outbox."""
        with self.read("max_outbox_id") as conn:
            return int(conn.execute(sa.select(sa.func.max(scheduler_outbox.c.id))).scalar() or 0)

    def outbox_stats(self) -> OutboxStats:
        """How many outbox rows there are, and when the oldest was written."""
        query = sa.select(sa.func.count(), sa.func.min(scheduler_outbox.c.created_at))
        with self.read("outbox_stats") as conn:
            rows, oldest = conn.execute(query).one()
        return OutboxStats(rows=int(rows), oldest_at=stored_utc(oldest))

    def prune_outbox(self, up_to_id: int, before: datetime, limit: int) -> int:
        """Delete at most ``limit`` outbox rows with ``id <= up_to_id`` written before
        ``before``, lowest ids first; returns how many went."""
        doomed = (
            sa.select(scheduler_outbox.c.id)
            .where(scheduler_outbox.c.id <= up_to_id, scheduler_outbox.c.created_at < before)
            .order_by(scheduler_outbox.c.id)
            .limit(limit)
        )
        statement = scheduler_outbox.delete().where(
            scheduler_outbox.c.id.in_(doomed.scalar_subquery())
        )
        with self.write("prune_outbox") as conn:
            return int(conn.execute(statement).rowcount)

    def update_last_used(self, updates: Mapping[int, datetime]) -> int:
        """Move ``last_used_at`` forward, never back, in one statement batch.

        Bumps no revision (the trigger does not watch this column) and writes no
        outbox event. Returns how many rows moved.
        """
        batch = self.last_used_batch(updates)
        if not batch:
            return 0
        with self.write("update_last_used") as conn:
            return self.apply_last_used(conn, batch)

    def _memberships_of_group(self, conn: sa.Connection, group_id: int) -> dict[int, list[int]]:
        # Every membership of the group's members, in one query without an id list.
        mine = account_groups.alias("mine")
        query = (
            sa.select(account_groups.c.account_id, account_groups.c.group_id)
            .join(mine, mine.c.account_id == account_groups.c.account_id)
            .where(mine.c.group_id == group_id)
        )
        found: dict[int, list[int]] = defaultdict(list)
        for account_id, member_of in conn.execute(query):
            found[account_id].append(member_of)
        return found


if TYPE_CHECKING:
    from tasks.settings import Settings

    # mypy proves the class implements the seam the tasks are written against.
    _conforms: type[Source] = SqlSource
    _knows_order: type[KnowsOrder] = SqlSource
