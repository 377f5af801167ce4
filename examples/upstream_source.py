"""A ``Source`` over a schema of its own: what to write when your accounts are not in the
``accounts`` / ``groups`` / ``account_groups`` tables the SQL source reads.

Here an application keeps its upstream accounts in one table, ``upstreams``, under its
own column names, with a JSON column ``attributes`` for everything else (group
memberships included); its groups are ``teams``, its outbox is ``upstream_events``.
The workers read it when started, in the checkout, with::

    SCHED_SOURCE_FACTORY=examples.upstream_source:upstream_source \\
    SCHED_DATABASE_URL=sqlite:////path/to/app.sqlite3 \\
    celery -A tasks worker -B -Q rebuild,outbox,last_used

Plain ``sqlite3`` on purpose: a source needs none of SQLAlchemy. Every method opens its
own short connection, so the prefork workers (which fork after import) share nothing.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cache import Account, SchedulerBucket, check_account_id
from tasks.buckets import BucketRules, donor_opts_in, platforms_read
from tasks.settings import Settings
from tasks.source import Group, OutboxEvent, SchemaMissing, SourceUnavailable

if TYPE_CHECKING:
    from tasks.source import Source

SCHEMA = """
CREATE TABLE IF NOT EXISTS upstreams (
    upstream_id  INTEGER PRIMARY KEY,
    label        TEXT NOT NULL,
    vendor       TEXT NOT NULL,                 -- the platform
    auth_kind    TEXT NOT NULL,                 -- the account type
    state        TEXT NOT NULL DEFAULT 'on',    -- on | off | broken
    rank         INTEGER NOT NULL DEFAULT 50,   -- the priority, lower first
    version      INTEGER NOT NULL DEFAULT 1,    -- bumped by every change: the revision
    removed_at   TEXT,                          -- soft delete
    last_used_at TEXT,
    attributes   TEXT NOT NULL DEFAULT '{}'     -- JSON: teams, concurrency, cooldown_until...
);
CREATE TABLE IF NOT EXISTS teams (
    team_id INTEGER PRIMARY KEY,
    title   TEXT NOT NULL,
    vendor  TEXT,
    active  INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS upstream_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a watermark stays valid
    kind        TEXT NOT NULL,                      -- an OutboxEventType value
    upstream_id INTEGER,
    team_id     INTEGER,
    body        TEXT NOT NULL DEFAULT '{}',         -- the event's JSON payload
    at          TEXT NOT NULL
);
"""

STATUS_OF_STATE = {"on": "active", "off": "disabled", "broken": "error"}


def stamp(at: datetime) -> str:
    """A time as stored: UTC ISO text of one width, so text order is time order."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def to_account(row: sqlite3.Row) -> Account:
    attributes: dict[str, Any] = json.loads(row["attributes"])
    teams: dict[str, int] = attributes.get("teams", {})
    return Account(
        id=row["upstream_id"],
        name=row["label"],
        platform=row["vendor"],
        type=row["auth_kind"],
        status=STATUS_OF_STATE.get(row["state"], "error"),
        schedulable=attributes.get("schedulable", True),
        priority=row["rank"],
        concurrency=attributes.get("concurrency", 3),
        last_used_at=row["last_used_at"],
        rate_limit_reset_at=attributes.get("cooldown_until"),
        group_ids=tuple(sorted(int(team) for team in teams)),
        credentials=attributes.get("credentials", {}),
        extra={"mixed_scheduling": bool(attributes.get("mixed_scheduling", False))},
        revision=row["version"],
    )


class UpstreamSource:
    """:class:`tasks.source.Source` over ``upstreams``, ``teams`` and ``upstream_events``."""

    def __init__(self, path: str | Path, rules: BucketRules) -> None:
        self.path = Path(path)
        self.rules = rules

    @contextmanager
    def _connect(self, action: str) -> Iterator[sqlite3.Connection]:
        # mode=rw: a read never creates the file. The tasks retry SourceUnavailable and
        # fail at once on SchemaMissing.
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=30)
        except sqlite3.OperationalError as exc:
            raise SchemaMissing(f"no database at {self.path} ({action}): {exc}") from exc
        conn.row_factory = sqlite3.Row
        try:
            with conn:
                yield conn
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise SchemaMissing(f"tables missing in {self.path} ({action}): {exc}") from exc
            raise SourceUnavailable(f"database {self.path} failed ({action}): {exc}") from exc
        finally:
            conn.close()

    def accounts_for_bucket(self, bucket: SchedulerBucket, now: datetime) -> list[Account]:
        platforms = platforms_read(bucket, self.rules)
        marks = ",".join("?" * len(platforms))
        query = f"SELECT * FROM upstreams WHERE removed_at IS NULL AND vendor IN ({marks})"
        with self._connect(f"accounts_for_bucket {bucket}") as conn:
            rows = conn.execute(query, platforms).fetchall()
        ordered: list[tuple[tuple[int, int, int], Account]] = []
        for row in rows:
            account = to_account(row)
            teams = json.loads(row["attributes"]).get("teams", {})
            if bucket.group_id == 0 and teams:
                continue
            if bucket.group_id != 0 and str(bucket.group_id) not in teams:
                continue
            if not account.is_candidate(now):
                continue
            if account.platform != bucket.platform and not donor_opts_in(account.extra):
                continue
            membership = int(teams.get(str(bucket.group_id), 0))
            ordered.append(((membership, account.priority, account.id), account))
        return [account for _, account in sorted(ordered, key=lambda pair: pair[0])]

    def get_accounts(self, account_ids: Iterable[int]) -> dict[int, Account]:
        ids = sorted({check_account_id(i) for i in account_ids})
        if not ids:
            return {}
        query = (
            f"SELECT * FROM upstreams WHERE removed_at IS NULL AND upstream_id IN "
            f"({','.join('?' * len(ids))})"
        )
        with self._connect("get_accounts") as conn:
            return {row["upstream_id"]: to_account(row) for row in conn.execute(query, ids)}

    def deleted_revisions(self, account_ids: Iterable[int]) -> dict[int, int]:
        ids = sorted({check_account_id(i) for i in account_ids})
        if not ids:
            return {}
        query = (
            f"SELECT upstream_id, version FROM upstreams WHERE removed_at IS NOT NULL "
            f"AND upstream_id IN ({','.join('?' * len(ids))})"
        )
        with self._connect("deleted_revisions") as conn:
            return {row[0]: row[1] for row in conn.execute(query, ids)}

    def active_groups(self) -> list[Group]:
        query = "SELECT * FROM teams WHERE active AND vendor IS NOT NULL ORDER BY team_id"
        with self._connect("active_groups") as conn:
            return [
                Group(id=row["team_id"], name=row["title"], platform=row["vendor"])
                for row in conn.execute(query)
            ]

    def outbox_after(self, after_id: int, limit: int) -> list[OutboxEvent]:
        query = "SELECT * FROM upstream_events WHERE seq > ? ORDER BY seq LIMIT ?"
        with self._connect("outbox_after") as conn:
            return [_event(row) for row in conn.execute(query, (after_id, limit))]

    def outbox_by_ids(self, event_ids: Iterable[int]) -> list[OutboxEvent]:
        ids = sorted({int(i) for i in event_ids})
        if not ids:
            return []
        query = f"SELECT * FROM upstream_events WHERE seq IN ({','.join('?' * len(ids))})"
        with self._connect("outbox_by_ids") as conn:
            return sorted((_event(row) for row in conn.execute(query, ids)), key=lambda e: e.id)

    def max_outbox_id(self) -> int:
        """Optional: lets the poller and ``sched status`` report the outbox lag."""
        with self._connect("max_outbox_id") as conn:
            row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM upstream_events").fetchone()
        return int(row[0])

    def update_last_used(self, updates: Mapping[int, datetime]) -> int:
        # Forward only, and no version bump: a touch is not a change of the account.
        rows = [(stamp(at), check_account_id(i), stamp(at)) for i, at in updates.items()]
        query = (
            "UPDATE upstreams SET last_used_at = ? WHERE upstream_id = ? "
            "AND (last_used_at IS NULL OR last_used_at < ?)"
        )
        with self._connect("update_last_used") as conn:
            return conn.executemany(query, rows).rowcount


def _event(row: sqlite3.Row) -> OutboxEvent:
    try:
        payload, error = json.loads(row["body"]), None
    except ValueError as exc:  # counted and passed as malformed, never a stuck poller
        payload, error = {}, f"body is not JSON: {exc}"
    return OutboxEvent(
        id=row["seq"],
        event_type=row["kind"],
        account_id=row["upstream_id"],
        group_id=row["team_id"],
        payload=payload if isinstance(payload, dict) else {},
        created_at=row["at"],
        error=error,
    )


def upstream_source(settings: Settings) -> UpstreamSource:
    """The factory ``SCHED_SOURCE_FACTORY`` names: the file of ``SCHED_DATABASE_URL``."""
    prefix = "sqlite:///"
    if not settings.database_url.startswith(prefix):
        raise ValueError(f"upstream_source reads SQLite only, not {settings.database_url!r}")
    rules = BucketRules(
        mixed_platforms=frozenset(settings.mixed_platforms),
        mixed_donor_platform=settings.mixed_donor_platform,
    )
    return UpstreamSource(settings.database_url[len(prefix) :], rules)


# -- the application's side: the tables, and a change with its outbox event ---------


def create_tables(path: str | Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA)


def save_upstream(path: str | Path, upstream_id: int, **columns: Any) -> None:
    """Insert or change an upstream and write its ``account_changed`` event in the same
    transaction: a change the workers see is always a change they are told of."""
    attributes = columns.pop("attributes", None)
    if attributes is not None:
        columns["attributes"] = json.dumps(attributes)
    with sqlite3.connect(path) as conn:
        before = _teams(conn, upstream_id)
        if before is None:
            names = ["upstream_id", *columns]
            conn.execute(
                f"INSERT INTO upstreams ({', '.join(names)}) VALUES ({','.join('?' * len(names))})",
                [upstream_id, *columns.values()],
            )
        else:
            assignments = ", ".join(f"{name} = ?" for name in columns)
            conn.execute(
                f"UPDATE upstreams SET {assignments}, version = version + 1 WHERE upstream_id = ?",
                [*columns.values(), upstream_id],
            )
        # The groups it left and the groups it joined: both have buckets to rebuild.
        groups = sorted((before or set()) | (_teams(conn, upstream_id) or set()))
        conn.execute(
            "INSERT INTO upstream_events (kind, upstream_id, body, at) VALUES (?, ?, ?, ?)",
            (
                "account_changed",
                upstream_id,
                json.dumps({"group_ids": groups}),
                stamp(datetime.now(UTC)),
            ),
        )


def _teams(conn: sqlite3.Connection, upstream_id: int) -> set[int] | None:
    """The upstream's teams; None when there is no such upstream."""
    row = conn.execute(
        "SELECT attributes FROM upstreams WHERE upstream_id = ?", (upstream_id,)
    ).fetchone()
    return None if row is None else {int(team) for team in json.loads(row[0]).get("teams", {})}


if TYPE_CHECKING:
    # mypy proves the class implements the seam the tasks are written against.
    _conforms: type[Source] = UpstreamSource
