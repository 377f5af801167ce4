"""Rich rendering of a :class:`~tasks.ops.status.StatusReport`, once or refreshing live."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import datetime

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from tasks.ops.status import BucketStatus, StatusReport

# Output that is not a terminal has no width to fit: Rich would assume 80 columns and cut
# every longer line; a pipe or a file gets whole lines instead.
UNBOUNDED_WIDTH = 100_000


def plain_console() -> Console:
    """A console for data: no markup, emoji codes or highlighting in names, and whole
    lines when the output is not a terminal."""
    console = Console(emoji=False, highlight=False, markup=False)
    if not console.is_terminal:
        console.width = UNBOUNDED_WIDTH
    return console


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _since(moment: datetime | None, now: datetime) -> str:
    return "-" if moment is None else f"{_age((now - moment).total_seconds())} ago"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def bucket_table(rows: Sequence[BucketStatus], max_rows: int | None = None) -> Table:
    """One row per bucket; past ``max_rows`` the rest is summed up in a last row."""
    table = Table(expand=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("bucket")
    table.add_column("version", justify="right")
    table.add_column("accounts", justify="right")
    table.add_column("schedulable now", justify="right")
    table.add_column("age", justify="right")
    table.add_column("last rebuild", justify="right")
    shown = rows if max_rows is None or len(rows) <= max_rows else rows[: max(max_rows - 1, 0)]
    for row in shown:
        missing = row.active_version is None
        table.add_row(
            Text(row.bucket),  # Text: a bucket like 0:gemini:single is no emoji code
            Text("no snapshot", style="yellow") if missing else f"v{row.active_version}",
            "-" if missing else str(row.account_count),
            _num(row.schedulable_now),
            _age(row.age_seconds),
            "-" if row.rebuild_ms is None else f"{row.rebuild_ms:.1f} ms",
        )
    if len(shown) < len(rows):
        rest = rows[len(shown) :]
        active = sum(1 for r in rest if r.active_version is not None)
        more = Text(f"... {len(rest)} more ({active} active)", style="dim")
        table.add_row(more, "", "", "", "", "")
    return table


def summary_lines(report: StatusReport) -> list[Text]:
    """Outbox, last-used and rebuild figures, a line each."""
    out = report.outbox
    lag = "-" if out.lag is None else str(out.lag)
    # Each line fits 80 columns with ids of five digits (the live view's budget); the
    # events-applied counter and the oldest row's age are in --json and the metrics.
    outbox = Text.assemble(
        ("outbox     ", "bold"),
        "lag ",
        (lag, "red" if out.lag else "green"),
        f" (watermark {out.watermark} of {_num(out.newest_id)})  gaps {out.gaps}",
        f" ({_age(out.oldest_gap_seconds)})" if out.gaps else "",
        f"  rows {_num(out.rows)}" if out.rows is not None else "",
    )
    used = report.last_used
    last_used = Text.assemble(
        ("last used  ", "bold"),
        f"flushes to db {_num(used.db_flushes)}  rows {_num(used.db_rows_written)}"
        f"  pending {used.pending_db_writes}"
        f"  last flush {_since(used.last_db_flush_at, report.generated_at)}",
    )
    active = sum(1 for row in report.buckets if row.active_version is not None)
    buckets = Text.assemble(
        ("buckets    ", "bold"),
        f"{active} active of {len(report.buckets)}  rebuilds {_num(report.rebuilds)}",
    )
    return [buckets, outbox, last_used]


def _unwrapped(part: RenderableType) -> RenderableType:
    """Lines of text are cut, not wrapped, so the view's height is what it counts."""
    if isinstance(part, Text):
        part = part.copy()
        part.no_wrap = True
        part.overflow = "ellipsis"
    return part


# A bucket in the two-column layout: name, version, schedulable/accounts, age.
COMPACT_CELL = "{bucket:<20} {version:>5} {accounts:>7} {age:>4}"
COMPACT_GAP = "  "


def compact_width() -> int:
    return 2 * len(COMPACT_CELL.format(bucket="", version="", accounts="", age="")) + len(
        COMPACT_GAP
    )


def compact_table(rows: Sequence[BucketStatus]) -> list[RenderableType]:
    """The buckets two to a line, for a view too short for a line each: every bucket
    stays in sight rather than "... N more"."""

    def cell(row: BucketStatus | None) -> Text:
        if row is None:
            return Text("")
        missing = row.active_version is None
        accounts = f"{_num(row.schedulable_now)}/{row.account_count}"
        text = COMPACT_CELL.format(
            bucket=row.bucket,
            version="none" if missing else f"v{row.active_version}",
            accounts="-" if missing else accounts,
            age=_age(row.age_seconds),
        )
        return Text(text, style="yellow" if missing else "")

    half = (len(rows) + 1) // 2
    head = COMPACT_CELL.format(bucket="bucket", version="ver", accounts="now/all", age="age")
    lines: list[Text] = [Text(head + (COMPACT_GAP + head if len(rows) > 1 else ""), style="bold")]
    for left, right in zip(rows[:half], [*rows[half:], None], strict=False):
        lines.append(Text.assemble(cell(left), COMPACT_GAP if right else "", cell(right)))
    return [_unwrapped(line) for line in lines]


def render_report(
    report: StatusReport,
    *,
    header: Sequence[RenderableType] = (),
    footer: Sequence[RenderableType] = (),
    height: int | None = None,
    width: int | None = None,
) -> RenderableType:
    """The report as one renderable.

    With ``height`` it fits the screen: the bucket table a line a bucket if that fits,
    else (when ``width`` allows) two buckets a line, else cut; lines of the footer after
    its first are dropped before buckets are.
    """
    header, footer = [_unwrapped(part) for part in header], [_unwrapped(part) for part in footer]
    summary = [_unwrapped(line) for line in summary_lines(report)]
    rows = report.buckets
    table: RenderableType | None = None
    if height is not None:
        # header, summary, a blank line, the table's header line, a blank line before
        # the footer, and one spare line for the cursor
        fixed = len(header) + len(summary) + 3 + (1 if footer else 0)
        room = height - fixed - len(footer)
        optional = max(len(footer) - 1, 0)
        if len(rows) <= room:
            table = bucket_table(rows)
        elif len(rows) <= room + optional:
            footer = footer[: len(footer) - (len(rows) - room)]
            table = bucket_table(rows)
        elif width is not None and width >= compact_width():
            lines = (len(rows) + 1) // 2
            if lines <= room + optional:
                footer = footer[: len(footer) - max(0, lines - room)]
                table = Group(*compact_table(rows))
        if table is None:
            footer = footer[:1]
            table = bucket_table(rows, max(3, height - fixed - len(footer)))
    else:
        table = bucket_table(rows)
    parts: list[RenderableType] = [*header, *summary, Text(""), table]
    if footer:
        parts += [Text(""), *footer]
    return Group(*parts)


def run_live(
    frame: Callable[[int], RenderableType],
    *,
    console: Console,
    refresh_seconds: float = 1.0,
    until: Callable[[], bool] = lambda: False,
) -> None:
    """Redraw ``frame(height)`` every ``refresh_seconds`` until ``until()`` or Ctrl-C.

    KeyboardInterrupt propagates, so the caller's cleanup runs.
    """
    with Live(
        frame(console.size.height),
        console=console,
        refresh_per_second=4,
        transient=False,
        vertical_overflow="crop",
    ) as live:
        while not until():
            time.sleep(refresh_seconds)
            live.update(frame(console.size.height))
