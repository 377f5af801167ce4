"""What the ``sched`` commands do, apart from parsing: kept here so the CLI stays thin."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from rich.table import Table
from rich.text import Text

from cache import Account, BucketInfo
from tasks.ops.demo import SeedSummary, seed_demo
from tasks.ops.live import plain_console
from tasks.settings import Settings
from tasks.source import OutboxEvent

# Outbox payloads can be long (bulk changes list every id); a tail line stays readable.
PAYLOAD_CHARS = 100


class BadSetting(ValueError):
    """A setting that parses but cannot work (the CLI exits with status 2)."""


def _relative(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    if span < 120:
        text = f"{span:.0f}s"
    elif span < 7200:
        text = f"{span / 60:.0f}m"
    else:
        text = f"{span / 3600:.1f}h"
    return f"in {text}" if seconds > 0 else f"{text} ago"


# -- database -------------------------------------------------------------------------


def count_accounts(database_url: str) -> int:
    """Accounts (not deleted) in the database, creating the schema first if missing."""
    from tasks.source.engine import db_errors
    from tasks.source.schema import accounts, init_schema

    engine = init_schema(database_url)
    try:
        with db_errors(engine, "count accounts"), engine.connect() as conn:
            query = sa.select(sa.func.count()).select_from(accounts)
            return int(conn.scalar(query.where(accounts.c.deleted_at.is_(None))) or 0)
    finally:
        engine.dispose()


def account_ids(database_url: str) -> list[int]:
    """Ids of the accounts that are not deleted, lowest first."""
    from tasks.source.engine import db_errors, make_engine
    from tasks.source.schema import accounts

    engine = make_engine(database_url)
    try:
        with db_errors(engine, "list accounts"), engine.connect() as conn:
            query = sa.select(accounts.c.id).where(accounts.c.deleted_at.is_(None))
            return [int(row) for row in conn.scalars(query.order_by(accounts.c.id))]
    finally:
        engine.dispose()


def seed_database(settings: Settings, *, scale: float = 1.0, seed: int = 7) -> SeedSummary:
    """Write the demo data set through the source's helpers (so with outbox events)."""
    from tasks.source import SqlSource, SqlWriter
    from tasks.source.schema import init_schema

    init_schema(settings.database_url, notify_channel=settings.outbox_notify_channel).dispose()
    source = SqlSource.from_settings(settings)
    try:
        return seed_demo(SqlWriter(source), scale=scale, seed=seed)
    finally:
        source.close()


# -- outbox ---------------------------------------------------------------------------


def event_state(event_id: int, watermark: int, gaps: Mapping[int, datetime]) -> str:
    if event_id in gaps:
        return "gap"
    return "applied" if event_id <= watermark else "pending"


def event_header() -> str:
    """The column names above :func:`event_line`'s lines."""
    return (
        f"{'id':>8}  {'created (UTC)':<19}  {'state':<7}  {'event':<22}  "
        f"{'account':<14} {'group':<10} payload"
    )


def event_line(event: OutboxEvent, watermark: int, gaps: Mapping[int, datetime]) -> str:
    """One outbox event as a line: id, time, state, type, account, group, payload."""
    payload = json.dumps(event.payload, separators=(",", ":"), sort_keys=True, default=str)
    if len(payload) > PAYLOAD_CHARS:
        payload = payload[: PAYLOAD_CHARS - 3] + "..."
    account = "-" if event.account_id is None else str(event.account_id)
    group = "-" if event.group_id is None else str(event.group_id)
    return (
        f"{event.id:>8}  {event.created_at:%Y-%m-%d %H:%M:%S}  "
        f"{event_state(event.id, watermark, gaps):<7}  {event.event_type:<22}  "
        f"account={account:<6} group={group:<4} {payload}"
    )


class OutboxFollower:
    """The lines of ``sched outbox tail``: each event once when first seen, and again
    whenever the state it was shown in changes (pending to applied, gap to applied)."""

    # Events awaited at most: beyond, the oldest are no longer followed.
    MAX_UNSETTLED = 10_000

    def __init__(self, cache: Any, *, after: int) -> None:
        self.cache = cache
        self.last = after
        self.unsettled: dict[int, tuple[OutboxEvent, str]] = {}

    def lines(self, fresh: Sequence[OutboxEvent]) -> list[str]:
        watermark, gaps = self.cache.get_outbox_watermark(), self.cache.outbox_gaps()
        out: list[str] = []
        for event, shown in list(self.unsettled.values()):
            state = event_state(event.id, watermark, gaps)
            if state != shown:
                out.append(event_line(event, watermark, gaps))
                self._remember(event, state)
        for event in fresh:
            out.append(event_line(event, watermark, gaps))
            self._remember(event, event_state(event.id, watermark, gaps))
            self.last = max(self.last, event.id)
        while len(self.unsettled) > self.MAX_UNSETTLED:
            del self.unsettled[min(self.unsettled)]
        return out

    def _remember(self, event: OutboxEvent, state: str) -> None:
        if state == "applied":
            self.unsettled.pop(event.id, None)
        else:
            self.unsettled[event.id] = (event, state)


# -- snapshots ------------------------------------------------------------------------


def snapshot_rows(accounts: Sequence[Account], now: datetime) -> list[dict[str, Any]]:
    """The accounts in order with their schedulable-now flag; never a credential."""
    return [
        {
            "position": position,
            "id": account.id,
            "name": account.name,
            "platform": account.platform,
            "type": account.type,
            "priority": account.priority,
            "status": account.status.value,
            "schedulable": account.schedulable,
            "schedulable_now": account.is_schedulable(now),
            "blocked_until": account.blocked_until(now),
            "last_used_at": account.last_used_at,
        }
        for position, account in enumerate(accounts, start=1)
    ]


def print_snapshot(
    info: BucketInfo, accounts: Sequence[Account], now: datetime, *, as_json: bool = False
) -> None:
    rows = snapshot_rows(accounts, now)
    schedulable = sum(1 for row in rows if row["schedulable_now"])
    if as_json:
        document = {
            "bucket": str(info.bucket),
            "version": info.active_version,
            "built_at": info.built_at.isoformat() if info.built_at else None,
            "rebuild_ms": info.rebuild_ms,
            "schedulable_now": schedulable,
            "accounts": rows,
        }
        print(json.dumps(document, indent=2, default=_iso))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (
        ("#", "right"),
        ("id", "right"),
        ("name", "left"),
        ("type", "left"),
        ("priority", "right"),
        ("now", "left"),
        ("held until", "left"),
        ("last used", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        now_flag = Text("yes", style="green") if row["schedulable_now"] else Text("no", style="red")
        table.add_row(
            # Text, not str: names are data, never Rich markup or emoji codes.
            str(row["position"]),
            str(row["id"]),
            Text(row["name"]),
            Text(row["type"]),
            str(row["priority"]),
            now_flag,
            _relative(row["blocked_until"], now),
            _relative(row["last_used_at"], now),
        )
    console = plain_console()
    if rows:
        console.print(table)
    rebuild = "" if info.rebuild_ms is None else f", rebuild {info.rebuild_ms:.1f} ms"
    console.print(
        f"{info.bucket} v{info.active_version} active, {len(rows)} accounts,"
        f" {schedulable} schedulable now, built {_relative(info.built_at, now)}{rebuild}",
        markup=False,
        soft_wrap=True,  # one line, also when piped (Rich assumes 80 columns then)
    )


def _iso(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {value!r}")


# -- Flower ---------------------------------------------------------------------------


def run_flower(settings: Settings, *, port: int | None, address: str) -> None:
    """Run Flower in this process with basic auth from the settings.

    In-process, so the password reaches Flower without showing in the process list.
    """
    if not settings.flower_user or not settings.flower_password:
        raise BadSetting("SCHED_FLOWER_USER and SCHED_FLOWER_PASSWORD must not be empty")
    from tasks.celery import app

    _metrics_behind_auth()
    app.start(
        [
            "flower",
            f"--address={address}",
            f"--port={port or settings.flower_port}",
            f"--basic_auth={settings.flower_user}:{settings.flower_password}",
        ]
    )


def _metrics_behind_auth() -> None:
    """Flower serves ``/metrics`` to anyone, whatever its auth; ours asks for the same
    credentials as every other page (Prometheus scrapes with ``basic_auth``)."""
    import tornado.web
    from flower import urls
    from flower.views.monitor import Metrics

    class AuthenticatedMetrics(Metrics):  # type: ignore[misc]
        @tornado.web.authenticated
        async def get(self) -> None:
            await super().get()

    urls.handlers[:] = [
        (entry[0], AuthenticatedMetrics, *entry[2:])
        if isinstance(entry, tuple) and entry[1] is Metrics
        else entry
        for entry in urls.handlers
    ]
