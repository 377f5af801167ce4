"""A second terminal finds the system ``sched run`` runs: its .run/system.json.

The file is written here by hand (``sched run`` itself writes it in test_run.py), for a
process that is alive (this one) or gone, with the test's Redis and SQLite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from cache import RedisSchedulerCache
from tasks.ops import system
from tasks.source import SqlSource, SqlWriter
from tests.ops.conftest import CliResult
from tests.processes import child_env

pytestmark = pytest.mark.timeout(120)


def _write_system(directory: Path, redis_url: str, database_url: str, pid: int) -> Path:
    return system.write(
        directory / ".run",
        system.RunningSystem(
            pid=pid,
            directory=str(directory),
            started_at=datetime.now(UTC),
            redis_url=redis_url,
            broker_url=None,
            database_url=database_url,
        ),
    )


def _sched(*args: str, cwd: Path, **env: str) -> CliResult:
    """``sched ARGS`` with no SCHED_* variable but ``env``, as in a fresh shell."""
    done = subprocess.run(
        [sys.executable, "-m", "tasks", *args],
        cwd=cwd,
        env=child_env(**env),
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    return CliResult(done.returncode, done.stdout.decode(), done.stderr.decode())


@pytest.fixture
def running(
    redis_url: str, cache: RedisSchedulerCache, sqlite_url: str, source: SqlSource, tmp_path: Path
) -> Path:
    """A checkout-like directory whose .run/system.json names the test's servers."""
    SqlWriter(source).create_account(name="a", platform="openai", type="apikey")
    home = tmp_path / "checkout"
    path = _write_system(home, redis_url, sqlite_url, os.getpid())
    assert path.stat().st_mode & 0o077 == 0  # a URL may hold a password
    return home


def test_commands_read_the_running_system_and_say_so(
    running: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    subdirectory = running / "some" / "where"
    subdirectory.mkdir(parents=True)
    for cwd in (running, subdirectory):
        result = _sched("status", "--json", cwd=cwd)
        assert result.code == 0, result
        assert f"reading the system `sched run` runs in {running} (pid {os.getpid()})" in result.err
        assert redis_url in result.err
        report = json.loads(result.out)
        assert report["redis_url"] == redis_url
        assert report["outbox"]["newest_id"] == 1

    queued = _sched("rebuild", "0:openai:single", cwd=running)
    assert queued.code == 0 and "rebuild queued" in queued.out, queued
    assert redis_client.llen("rebuild") == 1  # the request reached this system's broker
    tail = _sched("outbox", "tail", cwd=running)
    assert tail.code == 0 and "account_changed" in tail.out, tail
    missing = _sched("snapshot", "0:openai:single", cwd=running)
    assert missing.code == 3, missing
    metrics = _sched("metrics", cwd=running)
    assert metrics.code == 0 and "sched_buckets_active 0.0" in metrics.out, metrics


def test_a_url_in_the_environment_wins_over_the_file(running: Path, redis_url: str) -> None:
    result = _sched("status", "--json", cwd=running, SCHED_REDIS_URL="redis://127.0.0.1:1/0")
    assert result.code == 1
    assert "reading the system" not in result.err
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in result.err


def test_nothing_running_and_no_url_is_one_line_that_says_what_to_do(tmp_path: Path) -> None:
    for args in (("status",), ("snapshot", "0:openai:single"), ("outbox", "tail"), ("metrics",)):
        result = _sched(*args, cwd=tmp_path, SCHED_RUN_DIR=str(tmp_path / ".run"))
        assert result.code == 1, (args, result)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1, result.err
        assert "no running system found" in lines[0]
        assert "make run" in lines[0] and "SCHED_REDIS_URL" in lines[0]
        assert result.out == ""


def test_the_file_of_a_process_that_is_gone_is_ignored(
    redis_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(10)
    _write_system(tmp_path, redis_url, sqlite_url, gone.pid)
    result = _sched("status", cwd=tmp_path, SCHED_RUN_DIR=str(tmp_path / ".run"))
    assert result.code == 1 and "no running system found" in result.err, result


def test_reading_never_creates_a_database(redis_url: str, cache: object, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"SCHED_REDIS_URL": redis_url, "SCHED_DATABASE_URL": "sqlite:///sched.sqlite3"}
    for args in (("outbox", "tail"), ("status",), ("metrics",), ("rebuild", "--all")):
        result = _sched(*args, cwd=elsewhere, **env)
        assert result.code == 1, (args, result)
        line = result.err.strip()
        assert f"no database at {elsewhere / 'sched.sqlite3'}" in line, line
        assert "sched db init" in line
    assert list(elsewhere.iterdir()) == []


def test_db_init_names_the_absolute_path(redis_url: str, tmp_path: Path) -> None:
    result = _sched("db", "init", cwd=tmp_path, SCHED_DATABASE_URL="sqlite:///here.sqlite3")
    assert result.code == 0, result
    assert f"schema ready in sqlite:///{tmp_path / 'here.sqlite3'}" in result.out
