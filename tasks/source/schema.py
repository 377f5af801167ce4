"""The source database's schema: tables, column types and the revision triggers.

SQLite by default (no server to start), PostgreSQL (psycopg 3) in production. Every
account change that matters for scheduling bumps ``accounts.revision``, by a trigger, so
even a plain SQL ``UPDATE`` from another application gives the cache a newer revision.
An update of ``last_used_at`` alone does not: it happens on every request and must not
make every cached payload look stale.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import FunctionElement

import cache
from tasks.source.capture_postgres import (
    DEFAULT_NOTIFY_CHANNEL,
    postgres_capture_triggers,
    postgres_notify_trigger,
)
from tasks.source.capture_sqlite import sqlite_capture_triggers
from tasks.source.engine import allow_create, as_engine, db_errors, mask_url, writing
from tasks.source.errors import SourceError

logger = logging.getLogger(__name__)

# Any fixed key serialises concurrent `init_schema` runs against one PostgreSQL.
_INIT_LOCK_KEY = 0x5C4ED


# -- column types --------------------------------------------------------------------
class UtcDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both dialects.

    SQLite has no zones: values are stored as UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``,
    which sorts like time, so SQL comparisons work) and come back with ``tzinfo=UTC``.
    Naive datetimes are taken to be UTC, as :class:`cache.Account` does.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {value!r}")
        value = cache.as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return stored_utc(value)


def stored_utc(value: object) -> datetime | None:
    """A stored datetime (a driver's datetime, or SQLite's text) as an aware UTC one."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"expected a stored datetime, got {value!r}")
    return cache.as_utc(value)


class utcnow(FunctionElement[datetime]):  # lowercase: it reads as the SQL function it is
    """The current time as a server default, in the dialect's own words."""

    type = UtcDateTime()
    inherit_cache = True


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    # Milliseconds, in the same sortable layout UtcDateTime writes.
    return "(strftime('%Y-%m-%d %H:%M:%f', 'now'))"


@compiles(utcnow)
def _utcnow_default(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    return "CURRENT_TIMESTAMP"


Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY is the rowid
Json = sa.JSON().with_variant(JSONB(), "postgresql")
_EMPTY_OBJECT = sa.text("'{}'")

# -- schema --------------------------------------------------------------------------
metadata = sa.MetaData()

accounts = sa.Table(
    "accounts",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("platform", sa.Text, nullable=False),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False, server_default="active"),
    sa.Column("schedulable", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("priority", sa.Integer, nullable=False, server_default="50"),
    sa.Column("concurrency", sa.Integer, nullable=False, server_default="3"),
    sa.Column("load_factor", sa.Integer, nullable=True, server_default=sa.null()),
    sa.Column("rate_multiplier", sa.Float, nullable=True, server_default=sa.null()),
    sa.Column("last_used_at", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("expires_at", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("auto_pause_on_expired", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("rate_limited_at", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("rate_limit_reset_at", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("overload_until", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("temp_unschedulable_until", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("temp_unschedulable_reason", sa.Text, nullable=True, server_default=sa.null()),
    sa.Column("session_window_start", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("session_window_end", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("session_window_status", sa.Text, nullable=True, server_default=sa.null()),
    sa.Column("credentials", Json, nullable=False, server_default=_EMPTY_OBJECT),
    sa.Column("extra", Json, nullable=False, server_default=_EMPTY_OBJECT),
    sa.Column("deleted_at", UtcDateTime, nullable=True, server_default=sa.null()),
    sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
    sa.Column("created_at", UtcDateTime, nullable=False, server_default=utcnow()),
    sa.Column("updated_at", UtcDateTime, nullable=False, server_default=utcnow()),
    sa.Index("ix_accounts_platform", "platform", "priority", "id"),
)

groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("platform", sa.Text, nullable=True, server_default=sa.null()),
    sa.Column("status", sa.Text, nullable=False, server_default="active"),
    sa.Column("created_at", UtcDateTime, nullable=False, server_default=utcnow()),
    sa.Column("updated_at", UtcDateTime, nullable=False, server_default=utcnow()),
)

account_groups = sa.Table(
    "account_groups",
    metadata,
    sa.Column("account_id", Id, sa.ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("group_id", Id, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("priority", sa.Integer, nullable=False, server_default="50"),
    # A group's bucket read walks this index in scheduling order.
    sa.Index("ix_account_groups_group", "group_id", "priority", "account_id"),
)

scheduler_outbox = sa.Table(
    "scheduler_outbox",
    metadata,
    # AUTOINCREMENT on SQLite: ids are never reused, even after the newest rows are
    # pruned, so a watermark can never point past a future event.
    sa.Column("id", Id, primary_key=True, autoincrement=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("account_id", sa.BigInteger, nullable=True),
    sa.Column("group_id", sa.BigInteger, nullable=True),
    sa.Column("payload", Json, nullable=False, server_default=_EMPTY_OBJECT),
    sa.Column("created_at", UtcDateTime, nullable=False, server_default=utcnow()),
    sqlite_autoincrement=True,
)

# The open transaction's account events, while a write helper asks for one event per
# account (tasks.source.capture): rows live only inside that transaction.
scheduler_outbox_open = sa.Table(
    "scheduler_outbox_open",
    metadata,
    sa.Column("account_id", sa.BigInteger, nullable=True),
    sa.Column("event_id", sa.BigInteger, nullable=True),
    # Created in this transaction: it was in no bucket before, so group 0 is named
    # only if it ends in no group.
    sa.Column("fresh", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_scheduler_outbox_open_account", "account_id"),
)

# Columns whose change does not make a new revision: the per-request touch, and the
# bookkeeping the trigger itself writes.
_UNVERSIONED = frozenset({"last_used_at", "revision", "updated_at"})
VERSIONED_COLUMNS = tuple(c.name for c in accounts.columns if c.name not in _UNVERSIONED)


def _sqlite_revision_trigger() -> list[str]:
    watched = ", ".join(VERSIONED_COLUMNS)
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in VERSIONED_COLUMNS)
    # SQLite triggers cannot assign NEW; the inner UPDATE does not fire the trigger
    # again (recursive triggers are off, and revision is not a watched column).
    return [
        "DROP TRIGGER IF EXISTS accounts_revision",
        f"""CREATE TRIGGER accounts_revision AFTER UPDATE OF {watched} ON accounts
        FOR EACH ROW WHEN NEW.revision <= OLD.revision AND ({changed})
        BEGIN
            UPDATE accounts
               SET revision = OLD.revision + 1,
                   updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
             WHERE id = NEW.id;
        END""",
    ]


def _sqlite_membership_triggers() -> list[str]:
    # Group ids are part of the cached account, so a membership change is a new revision.
    statements = []
    for when, ids in (
        ("INSERT", "NEW.account_id"),
        ("DELETE", "OLD.account_id"),
        ("UPDATE", "OLD.account_id, NEW.account_id"),
    ):
        name = f"account_groups_revision_{when.lower()}"
        statements += [
            f"DROP TRIGGER IF EXISTS {name}",
            f"""CREATE TRIGGER {name} AFTER {when} ON account_groups
            FOR EACH ROW
            BEGIN
                UPDATE accounts
                   SET revision = revision + 1,
                       updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
                 WHERE id IN ({ids});
            END""",
        ]
    return statements


def _postgres_revision_trigger() -> list[str]:
    watched = ", ".join(VERSIONED_COLUMNS)
    new = ", ".join(f"NEW.{c}" for c in VERSIONED_COLUMNS)
    old = ", ".join(f"OLD.{c}" for c in VERSIONED_COLUMNS)
    return [
        f"""CREATE OR REPLACE FUNCTION accounts_bump_revision() RETURNS trigger AS $$
        BEGIN
            IF ROW({new}) IS DISTINCT FROM ROW({old}) THEN
                NEW.revision := GREATEST(NEW.revision, OLD.revision + 1);
                NEW.updated_at := now();
            END IF;
            RETURN NEW;
        END
        $$ LANGUAGE plpgsql""",
        "DROP TRIGGER IF EXISTS accounts_revision ON accounts",
        f"""CREATE TRIGGER accounts_revision BEFORE UPDATE OF {watched} ON accounts
        FOR EACH ROW EXECUTE FUNCTION accounts_bump_revision()""",
        # Group ids are part of the cached account: a membership change is a new revision
        # (also when the account's old membership moves to another account).
        """CREATE OR REPLACE FUNCTION account_groups_bump_revision() RETURNS trigger AS $$
        BEGIN
            IF TG_OP <> 'INSERT' THEN
                UPDATE accounts SET revision = revision + 1, updated_at = now()
                 WHERE id = OLD.account_id;
            END IF;
            IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.account_id <> OLD.account_id) THEN
                UPDATE accounts SET revision = revision + 1, updated_at = now()
                 WHERE id = NEW.account_id;
            END IF;
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql""",
        "DROP TRIGGER IF EXISTS account_groups_revision ON account_groups",
        """CREATE TRIGGER account_groups_revision AFTER INSERT OR UPDATE OR DELETE
        ON account_groups FOR EACH ROW EXECUTE FUNCTION account_groups_bump_revision()""",
    ]


def _notifies(conn: sa.Connection) -> bool:
    """Whether this schema's outbox notifies a channel already."""
    query = sa.text(
        "SELECT 1 FROM pg_proc WHERE proname = 'scheduler_outbox_notify'"
        " AND pronamespace = current_schema()::regnamespace"
    )
    return conn.execute(query).first() is not None


def init_schema(
    url_or_engine: str | sa.URL | Engine, *, notify_channel: str | None = None
) -> Engine:
    """Create the tables, indexes, the revision triggers and the triggers that write
    the outbox (:mod:`tasks.source.capture`); safe to run again.

        On PostgreSQL every outbox insert also notifies ``notify_channel``
    (``SCHED_OUTBOX_NOTIFY_CHANNEL``), so listeners wake on commit; None keeps the
    channel a previous run set (``sched_outbox`` on a new database).
    Returns the engine used, so a caller that passed a URL can keep it.
    """
    engine = as_engine(url_or_engine)
    allow_create(engine)
    with db_errors(engine, "init_schema"), writing(engine).begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two `db init` at once would race on CREATE TABLE IF NOT EXISTS.
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_INIT_LOCK_KEY)))
            statements = _postgres_revision_trigger()
            statements += postgres_capture_triggers(VERSIONED_COLUMNS)
            if notify_channel is not None or not _notifies(conn):
                statements += postgres_notify_trigger(notify_channel or DEFAULT_NOTIFY_CHANNEL)
        elif conn.dialect.name == "sqlite":
            statements = _sqlite_revision_trigger() + _sqlite_membership_triggers()
            statements += sqlite_capture_triggers(VERSIONED_COLUMNS)
        else:
            raise SourceError(
                f"unsupported database {mask_url(engine.url)}: use sqlite or postgresql"
            )
        metadata.create_all(conn)
        for statement in statements:
            conn.exec_driver_sql(statement)
    logger.info("schema ready in %s", mask_url(engine.url))
    return engine
