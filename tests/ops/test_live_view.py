"""The live view of ``sched run`` in the smallest terminal it must serve, 80x24: every
line whole, every bucket in sight; and output that is not a terminal is never cut."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from tasks.ops.live import plain_console, render_report
from tasks.ops.runner import Child, RunOptions, _Services
from tasks.ops.status import BucketStatus, LastUsedStatus, OutboxStatus, StatusReport
from tasks.settings import Settings

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
PLATFORMS = ("anthropic", "antigravity", "gemini", "openai")


def _report(groups: int = 5) -> StatusReport:
    """Buckets as `make run`'s demo has them: 21 of groups 0-4, some not built yet."""
    rows: list[BucketStatus] = []
    for group in range(groups):
        for platform in PLATFORMS:
            for mode in ("single", "forced", "mixed"):
                if mode == "mixed" and platform not in ("anthropic", "gemini"):
                    continue
                built = len(rows) % 7 != 3
                rows.append(
                    BucketStatus(
                        bucket=f"{group}:{platform}:{mode}",
                        active_version=1234 if built else None,
                        reserved_version=1234,
                        account_count=120 if built else 0,
                        schedulable_now=118 if built else None,
                        built_at=NOW - timedelta(seconds=42) if built else None,
                        age_seconds=42.0 if built else None,
                        rebuild_ms=12.5 if built else None,
                    )
                )
            if len(rows) >= 21:
                break
        if len(rows) >= 21:
            break
    rows = rows[:21]
    return StatusReport(
        generated_at=NOW,
        redis_url="redis://127.0.0.1:43127/0",
        buckets=rows,
        outbox=OutboxStatus(
            watermark=12345,
            newest_id=12350,
            lag=5,
            gaps=1,
            oldest_gap_seconds=3.0,
            events_applied=12300,
            last_poll_at=NOW,
            rows=12350,
            oldest_row_age_seconds=600.0,
        ),
        last_used=LastUsedStatus(
            pending_db_writes=12,
            db_flushes=1234,
            db_rows_written=123456,
            last_db_flush_at=NOW - timedelta(seconds=1),
        ),
        rebuilds=30303,
        stats={},
    )


@pytest.fixture
def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[_Services]:
    """The header of a run whose worker and Flower are up (stand-in processes)."""
    monkeypatch.chdir(tmp_path)
    worker = Child("worker", ["sleep", "60"], tmp_path / ".run" / "worker.log")
    flower = Child("flower", ["sleep", "60"], tmp_path / ".run" / "flower.log")
    (tmp_path / ".run").mkdir()
    for child in (worker, flower):
        child.process = subprocess.Popen(child.argv)
    found = _Services(
        settings=Settings(redis_url="redis://127.0.0.1:43127/0"),
        options=RunOptions(demo=True, run_dir=tmp_path / ".run"),
        database_url=f"sqlite:///{tmp_path / 'sched.sqlite3'}",
        flower_port=5555,
        worker=worker,
        flower=flower,
        metrics_url="http://127.0.0.1:9808/metrics",
        flower_ready=True,
        worker_ready=True,
    )
    try:
        yield found
    finally:
        for child in (worker, flower):
            assert child.process is not None
            child.process.kill()
            child.process.wait()


def _screen(width: int, height: int, services: _Services) -> list[str]:
    console = Console(
        file=io.StringIO(), width=width, height=height, force_terminal=True, color_system=None
    )
    footer = [Text("demo driver 12 changes, 3400 picks, 0 errors; latest:")]
    footer += [Text(f"  12:00:0{n} status of #{100 + n} -> disabled") for n in range(4)]
    view = render_report(
        _report(), header=services.header(), footer=footer, height=height, width=width
    )
    with console.capture() as captured:
        console.print(view)
    return captured.get().splitlines()


def test_the_live_view_fits_80_by_24_whole(services: _Services) -> None:
    lines = _screen(80, 24, services)
    assert len(lines) <= 23, "\n".join(lines)  # the last line is the cursor's
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "…" not in text and "..." not in text, text
    assert "more (" not in text
    assert f"ready (pid {services.worker.pid})" in text
    assert f"ready (pid {services.flower.pid})" in text
    assert "sched.sqlite3 (SQLite)" in text
    for row in _report().buckets:
        assert row.bucket in text, row.bucket
    assert "demo driver" in text


def test_a_tall_terminal_gets_a_line_a_bucket_and_the_whole_footer(services: _Services) -> None:
    lines = _screen(120, 50, services)
    text = "\n".join(lines)
    assert "schedulable now" in text  # the full table's header
    assert sum("status of #" in line for line in lines) == 4
    assert "…" not in text


def test_output_that_is_not_a_terminal_is_not_cut() -> None:
    console = plain_console()
    console.file = io.StringIO()
    assert not console.is_terminal
    report = _report()
    with console.capture() as captured:
        console.print(Text("x" * 300))
        console.print(render_report(report))
    out = captured.get()
    assert "x" * 300 in out and "…" not in out
