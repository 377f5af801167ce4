"""The ``sched`` command line, as an operator uses it: real Redis, SQLite, subprocesses."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cache import Account, RedisSchedulerCache, SchedulerBucket
from tasks.ops.cli import cli
from tasks.settings import Settings
from tasks.source import SqlSource, SqlWriter
from tests.ops.conftest import CliResult
from tests.processes import WorkerProcess, wait_for
from tests.support import closed_port

pytestmark = pytest.mark.timeout(180)
RunCli = Callable[..., CliResult]


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield prefix
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _command_paths(command, (*prefix, name))
        else:
            yield (*prefix, name)


def _one_line_error(result: CliResult) -> str:
    assert "Traceback" not in result.err, result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.err}"
    assert lines[0].startswith("sched: error: "), lines[0]
    return lines[0]


# -- help -----------------------------------------------------------------------------


def test_every_command_has_clear_help() -> None:
    paths = list(_command_paths(cli))
    expected = {
        ("status",),
        ("snapshot",),
        ("rebuild",),
        ("db", "init"),
        ("demo", "seed"),
        ("outbox", "tail"),
        ("run",),
        ("flower",),
        ("metrics",),
    }
    assert expected <= set(paths)
    runner = CliRunner()
    for path in paths:
        for flag in ("--help", "-h"):
            result = runner.invoke(cli, [*path, flag], prog_name="sched")
            assert result.exit_code == 0, (path, result.output)
            usage = f"Usage: sched {' '.join(path)}".rstrip()
            assert result.output.startswith(usage), result.output
            # A summary line under the usage line, not an empty docstring.
            assert len(result.output.splitlines()[2].strip()) > 10, (path, result.output)


def test_module_and_console_script_run(run_cli: RunCli) -> None:
    result = run_cli("--help")
    assert result.code == 0 and "snapshot" in result.out
    script = Path(sys.executable).parent / "sched"
    if not script.exists():
        script = Path(shutil.which("sched") or "sched")
    done = subprocess.run([str(script), "--help"], capture_output=True, timeout=60, cwd="/")
    assert done.returncode == 0, done.stderr.decode()
    assert b"Usage: sched" in done.stdout


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("snapshot", "0:anthropic"), "invalid bucket '0:anthropic'"),
        (("snapshot", "x:anthropic:single"), "group id 'x'"),
        (("snapshot", "0:anthropic:sideways"), "invalid mode 'sideways'"),
        (("rebuild",), "either BUCKET or --all"),
        (("rebuild", "0:anthropic:single", "--all"), "either BUCKET or --all"),
        (("outbox", "tail", "-n", "0"), "0 is not in the range"),
        (("status", "--color"), "No such option '--color'"),
        (("nonsense",), "No such command 'nonsense'"),
        (("snapshot",), "Missing argument 'BUCKET'"),
    ],
)
def test_malformed_input_is_one_line_and_exit_2(
    run_cli: RunCli, args: tuple[str, ...], needle: str
) -> None:
    result = run_cli(*args)
    assert result.code == 2, result
    assert needle in _one_line_error(result)


def test_malformed_setting_is_one_line_and_exit_2(run_cli: RunCli, ops_env: dict[str, str]) -> None:
    result = run_cli("status", env={**ops_env, "SCHED_OUTBOX_BATCH_SIZE": "many"})
    assert result.code == 2, result
    assert "SCHED_OUTBOX_BATCH_SIZE='many'" in _one_line_error(result)


@pytest.mark.parametrize(
    ("variable", "value", "args", "shown"),
    [
        ("SCHED_REDIS_URL", "localhost:6379", ("status",), "'localhost:6379'"),
        ("SCHED_REDIS_URL", "redis://:hunter2pw@h:port/0", ("status",), "redis://:***@h:port/0"),
        ("SCHED_DATABASE_URL", "nonsense", ("db", "init"), "'nonsense'"),
        (
            "SCHED_DATABASE_URL",
            "postgresql+nodriver://u:hunter2pw@h/db",
            ("db", "init"),
            "postgresql+nodriver://u:***@h/db",
        ),
    ],
)
def test_malformed_url_is_exit_2_and_masked(
    run_cli: RunCli,
    ops_env: dict[str, str],
    variable: str,
    value: str,
    args: tuple[str, ...],
    shown: str,
) -> None:
    result = run_cli(*args, env={**ops_env, variable: value})
    assert result.code == 2, result
    line = _one_line_error(result)
    assert f"invalid {variable}" in line and shown in line
    assert "hunter2pw" not in result.err


@pytest.mark.parametrize(
    "args",
    [("status",), ("snapshot", "0:openai:single"), ("rebuild", "0:openai:single"), ("run",)],
)
def test_unreachable_redis_names_the_masked_url(
    run_cli: RunCli, ops_env: dict[str, str], args: tuple[str, ...]
) -> None:
    url = f"redis://:hunter2pw@127.0.0.1:{closed_port()}/0"
    result = run_cli(*args, env={**ops_env, "SCHED_REDIS_URL": url})
    assert result.code == 1, result
    line = _one_line_error(result)
    assert url.replace("hunter2pw", "***") in line
    assert "hunter2pw" not in result.err + result.out


def test_unreachable_database_names_the_masked_url(
    run_cli: RunCli, ops_env: dict[str, str]
) -> None:
    url = f"postgresql+psycopg://sched:hunter2pw@127.0.0.1:{closed_port()}/sched"
    for args in (("db", "init"), ("demo", "seed"), ("outbox", "tail")):
        result = run_cli(*args, env={**ops_env, "SCHED_DATABASE_URL": url})
        assert result.code == 1, (args, result)
        line = _one_line_error(result)
        assert "postgresql+psycopg://sched:***@127.0.0.1" in line, line
        assert "hunter2pw" not in result.err + result.out


def test_run_refuses_a_busy_flower_port(run_cli: RunCli, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("run", "--flower-port", str(port))
    assert result.code == 2, result
    assert f"Flower port {port} is in use" in _one_line_error(result)
    assert not (tmp_path / ".run").exists()  # nothing was started


def test_missing_snapshot_is_exit_3(run_cli: RunCli) -> None:
    result = run_cli("snapshot", "0:openai:single")
    assert result.code == 3
    assert "no active snapshot" in _one_line_error(result)


def test_an_active_empty_snapshot_is_shown_as_such(run_cli: RunCli, configured: Settings) -> None:
    from tasks.runtime import get_cache

    bucket = SchedulerBucket.parse("99:openai:single")
    get_cache().set_snapshot(bucket, [], rebuild_ms=0.5)
    shown = run_cli("snapshot", str(bucket))
    assert shown.code == 0, shown
    assert shown.out.strip().startswith("99:openai:single v1 active, 0 accounts,")
    assert "rebuild" not in shown.out.replace("rebuild 0.5 ms", "")
    as_json = json.loads(run_cli("snapshot", str(bucket), "--json").out)
    assert as_json["version"] == 1 and as_json["accounts"] == []
    status = json.loads(run_cli("status", "--json").out)
    row = next(row for row in status["buckets"] if row["bucket"] == str(bucket))
    assert (row["active_version"], row["account_count"]) == (1, 0)


@pytest.mark.parametrize("command", ["snapshot", "rebuild"])
def test_an_unknown_platform_is_refused_naming_the_configured_ones(
    run_cli: RunCli, configured: Settings, command: str
) -> None:
    result = run_cli(command, "0:nonsense:single")
    assert result.code == 2, result
    error = _one_line_error(result)
    assert "unknown platform 'nonsense'" in error
    assert "anthropic, openai, gemini, antigravity" in error
    assert "sched rebuild" not in error


# -- status and snapshot --------------------------------------------------------------


def _account(account_id: int, **fields: object) -> Account:
    base: dict[str, object] = {
        "id": account_id,
        "name": f"acc-{account_id}",
        "platform": "openai",
        "type": "apikey",
        "credentials": {"api_key": f"sk-secret-{account_id}", "base_url": "https://x.invalid"},
    }
    return Account.model_validate({**base, **fields})


@pytest.fixture
def built(configured: Settings) -> RedisSchedulerCache:
    """One bucket with three accounts: usable, rate-limited for a minute, overloaded."""
    from tasks.runtime import get_cache

    cache = get_cache()
    now = datetime.now(UTC)
    accounts = [
        _account(1, priority=10),
        _account(
            2, priority=20, rate_limited_at=now, rate_limit_reset_at=now + timedelta(minutes=1)
        ),
        _account(3, priority=30, overload_until=now + timedelta(minutes=2)),
    ]
    cache.set_snapshot(SchedulerBucket.parse("0:openai:single"), accounts, rebuild_ms=1.5)
    cache.update_last_used({1: now - timedelta(seconds=5)})
    cache.advance_outbox(5)
    return cache


def test_status_json_shape(
    run_cli: RunCli, built: RedisSchedulerCache, db: SqlWriter, sqlite_url: str
) -> None:
    for n in range(7):
        db.create_account(name=f"a{n}", platform="gemini", type="apikey")
    result = run_cli("status", "--json")
    assert result.code == 0, result
    report = json.loads(result.out)
    assert set(report) >= {"generated_at", "redis_url", "buckets", "outbox", "last_used", "stats"}
    assert report["database_url"] == sqlite_url
    rows = {row["bucket"]: row for row in report["buckets"]}
    # The buckets kept warm are listed before their first snapshot, as in the live view.
    assert rows["0:gemini:mixed"]["active_version"] is None
    bucket = rows["0:openai:single"]
    assert bucket["active_version"] == 1
    assert bucket["account_count"] == 3
    assert bucket["schedulable_now"] == 1
    assert bucket["rebuild_ms"] == pytest.approx(1.5)
    assert 0 <= bucket["age_seconds"] < 60
    # The newest outbox id is the database's, as in the live view: not a stale figure.
    assert report["outbox"]["watermark"] == 5
    assert report["outbox"]["newest_id"] == 7
    assert report["outbox"]["lag"] == 2
    assert report["outbox"]["gaps"] == 0
    # The table itself: every row is kept until the retention passes.
    assert report["outbox"]["rows"] == 7
    assert 0 <= report["outbox"]["oldest_row_age_seconds"] < 60
    assert set(report["last_used"]) >= {"pending_db_writes", "db_flushes"}


def test_status_json_counters_are_integers_and_times_iso_utc(
    run_cli: RunCli, built: RedisSchedulerCache
) -> None:
    built.record_stats(
        {"rebuild_requests_sent": 303, "rebuilds": 7},
        {
            "last_rebuild_at": "1700000000.25",  # unix seconds, as the rebuilder writes it
            "outbox_last_poll_at": "2024-05-01T12:00:00+02:00",
            "last_used_db_flush_at": "2024-05-01T10:00:01+00:00",
            "last_rebuild_ms": "12.5",
            "outbox_lag": "4",
            "last_rebuild_bucket": "0:openai:single",
        },
    )
    result = run_cli("status", "--json")
    assert result.code == 0, result
    report = json.loads(result.out)
    figures = report["stats"]
    assert figures["rebuild_requests_sent"] == 303 and type(figures["rebuilds"]) is int
    assert figures["outbox_lag"] == 4 and figures["last_rebuild_ms"] == 12.5
    assert figures["last_rebuild_bucket"] == "0:openai:single"
    assert report["rebuilds"] == 7

    def utc(value: object) -> datetime:
        assert isinstance(value, str), value
        moment = datetime.fromisoformat(value)
        assert moment.utcoffset() == timedelta(0), value
        return moment

    assert utc(figures["last_rebuild_at"]) == datetime.fromtimestamp(1700000000.25, UTC)
    assert utc(figures["outbox_last_poll_at"]) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert utc(report["outbox"]["last_poll_at"]) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert utc(report["last_used"]["last_db_flush_at"]).second == 1
    utc(report["generated_at"])
    for row in report["buckets"]:
        if row["built_at"] is not None:
            utc(row["built_at"])


def test_status_tables(run_cli: RunCli, built: RedisSchedulerCache, source: SqlSource) -> None:
    built.record_stats({"last_used_db_flushes": 10**17, "last_used_db_rows": 10**17})
    result = run_cli("status")
    assert result.code == 0, result
    # Piped: whole lines, none cut to the 80 columns of a terminal nobody has.
    assert "…" not in result.out
    assert max(len(line) for line in result.out.splitlines()) > 80
    assert "0:openai:single" in result.out and "v1" in result.out
    assert "lag 0 (watermark 5 of 0)" in result.out


def test_snapshot_lists_accounts_in_order_with_flags(
    run_cli: RunCli, built: RedisSchedulerCache
) -> None:
    result = run_cli("snapshot", "0:openai:single")
    assert result.code == 0, result
    rows = [line.split() for line in result.out.splitlines() if line.split()[:1] != []]
    rows = [row for row in rows if row[0].isdigit()]
    assert [row[1] for row in rows] == ["1", "2", "3"]
    assert [row[5] for row in rows] == ["yes", "no", "no"]
    # Times relative to now: the CLI's start-up on a loaded machine takes seconds.
    held = [int(n) for n in re.findall(r"\bin (\d+)s\b", result.out)]
    assert "in 1m" in result.out or any(30 <= n <= 60 for n in held), result.out
    ago = [int(n) for n in re.findall(r"\b(\d+)s ago\b", result.out)]
    assert any(5 <= n <= 35 for n in ago), result.out
    summary = result.out.strip().splitlines()[-1]
    assert summary.startswith("0:openai:single v1 active, 3 accounts, 1 schedulable now, built ")
    assert summary.endswith("rebuild 1.5 ms")
    assert "sk-secret" not in result.out

    as_json = json.loads(run_cli("snapshot", "0:openai:single", "--json").out)
    assert as_json["version"] == 1
    assert [a["schedulable_now"] for a in as_json["accounts"]] == [True, False, False]
    assert as_json["accounts"][1]["blocked_until"] is not None
    assert "sk-secret" not in json.dumps(as_json)


# -- database, demo, rebuild, outbox --------------------------------------------------


def test_db_init_creates_the_schema_and_is_idempotent(
    run_cli: RunCli, ops_env: dict[str, str], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    env = {**ops_env, "SCHED_DATABASE_URL": url}
    for _ in range(2):
        result = run_cli("db", "init", env=env)
        assert result.code == 0, result
        assert f"schema ready in {url}" in result.out
    store = SqlSource(url, mixed_platforms=["anthropic", "gemini"], donor_platform="antigravity")
    try:
        assert store.max_outbox_id() == 0
    finally:
        store.close()


def test_demo_seed(run_cli: RunCli, source: SqlSource) -> None:
    result = run_cli("demo", "seed")
    assert result.code == 0, result
    assert "4 groups, 300 accounts" in result.out
    groups = source.active_groups()
    assert {g.platform for g in groups} == {"anthropic", "openai", "gemini"}
    accounts = source.get_accounts(range(1, 301))
    assert len(accounts) == 300
    platforms = {a.platform for a in accounts.values()}
    assert platforms == {"anthropic", "openai", "gemini", "antigravity"}
    now = datetime.now(UTC)
    resets = [a.rate_limit_reset_at for a in accounts.values() if a.rate_limit_reset_at]
    limited = [reset for reset in resets if reset > now]
    assert limited and all(reset <= now + timedelta(seconds=61) for reset in limited)
    assert any(a.extra.get("mixed_scheduling") for a in accounts.values())
    again = run_cli("demo", "seed")
    assert again.code == 0 and "not seeding" in again.out
    assert len(source.get_accounts(range(1, 400))) == 300


def test_rebuild_through_a_real_worker(
    run_cli: RunCli, source: SqlSource, worker: WorkerProcess, db: SqlWriter
) -> None:
    db.create_account(name="a", platform="openai", type="apikey")
    result = run_cli("rebuild", "0:openai:single", "--wait", "30")
    assert result.code == 0, (result, worker.log_tail())
    assert "0:openai:single: rebuild queued" in result.out
    assert "0:openai:single: v" in result.out and "active" in result.out
    shown = run_cli("snapshot", "0:openai:single", "--json")
    assert [a["name"] for a in json.loads(shown.out)["accounts"]] == ["a"]

    everything = run_cli("rebuild", "--all", "--wait", "60")
    assert everything.code == 0, (everything, worker.log_tail())
    assert "0:anthropic:mixed" in everything.out and "0:gemini:forced" in everything.out


def test_rebuild_without_a_worker_coalesces_and_wait_times_out(
    run_cli: RunCli, configured: Settings
) -> None:
    from tasks.runtime import get_cache

    first = run_cli("rebuild", "0:openai:single")
    assert first.code == 0 and "rebuild queued" in first.out
    # A queued task's lease is seconds (REBUILD_LEASE_SECONDS), less than a second
    # command may take to start on a loaded machine: hold it as a countdown would.
    get_cache().extend_rebuild_lease(SchedulerBucket.parse("0:openai:single"), 60)
    second = run_cli("rebuild", "0:openai:single", "--wait", "0.5")
    assert "already queued (coalesced)" in second.out
    assert second.code == 1
    assert "is a worker consuming" in _one_line_error(second)


def test_outbox_tail_marks_applied_pending_and_gaps(
    run_cli: RunCli, source: SqlSource, configured: Settings, db: SqlWriter
) -> None:
    from tasks.runtime import get_cache

    for n in range(5):
        db.create_account(name=f"a{n}", platform="openai", type="apikey")
    get_cache().advance_outbox(3, new_gaps=[2])
    result = run_cli("outbox", "tail", "-n", "10")
    assert result.code == 0, result
    header, *lines = result.out.splitlines()
    assert header.split()[:5] == ["id", "created", "(UTC)", "state", "event"]
    assert header.index("state") == lines[0].index(lines[0].split()[3])
    states = {int(line.split()[0]): line.split()[3] for line in lines}
    assert states == {1: "applied", 2: "gap", 3: "applied", 4: "pending", 5: "pending"}
    assert "account_changed" in result.out
    assert len(run_cli("outbox", "tail", "-n", "2").out.splitlines()) == 1 + 2


def test_outbox_tail_follow_prints_new_events_and_their_changes_until_ctrl_c(
    ops_env: dict[str, str], source: SqlSource, tmp_path: Path, db: SqlWriter
) -> None:
    from tasks.runtime import get_cache

    db.create_account(name="first", platform="openai", type="apikey")
    process = subprocess.Popen(
        [sys.executable, "-m", "tasks", "outbox", "tail", "--follow", "--interval", "0.2"],
        env=ops_env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().split()[0] == b"id"  # the header, once
        assert process.stdout.readline().split()[0] == b"1"
        db.create_group("team", "openai")
        started = time.monotonic()
        line = process.stdout.readline()
        assert line.split()[0] == b"2" and b"group_changed" in line
        assert line.split()[3] == b"pending"
        assert time.monotonic() - started < 30
        # Applied meanwhile (as a poller would): each shown again, in its new state.
        get_cache().advance_outbox(2)
        changed = sorted(process.stdout.readline().split()[:4:3] for _ in range(2))
        assert changed == [[b"1", b"applied"], [b"2", b"applied"]]
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert b"Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_in_process_status_uses_runtime_settings(built: RedisSchedulerCache) -> None:
    """The CLI reads the settings in force (what tests and embedding apps set)."""
    result = CliRunner().invoke(cli, ["status", "--json"], prog_name="sched")
    assert result.exit_code == 0, result.output
    assert wait_for(lambda: json.loads(result.output)["buckets"], what="buckets")
