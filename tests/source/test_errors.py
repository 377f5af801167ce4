"""Failures of the database surface as one retryable class, naming the masked URL."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from cache import SchedulerBucket
from tasks.source import SqlSource, SqlWriter
from tasks.source.engine import make_engine, mask_url
from tasks.source.errors import InvalidDatabaseUrl, SchemaMissing, SourceUnavailable
from tasks.source.schema import init_schema
from tests.processes import child_env
from tests.source.helpers import sql
from tests.support import free_port

NOW = datetime(2030, 1, 1, tzinfo=UTC)
BUCKET = SchedulerBucket.parse("0:openai:single")


def test_mask_url_hides_the_password_only() -> None:
    assert mask_url("postgresql+psycopg://app:s3cret@db:5432/sched") == (
        "postgresql+psycopg://app:***@db:5432/sched"
    )
    assert mask_url("sqlite:///var/lib/sched.sqlite3") == "sqlite:///var/lib/sched.sqlite3"


def test_unreachable_postgres_is_source_unavailable_quickly_with_a_masked_url() -> None:
    url = f"postgresql+psycopg://app:s3cret@127.0.0.1:{free_port()}/sched"
    source = SqlSource(url)
    db = SqlWriter(source)
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnavailable) as caught:
            source.ping()
        with pytest.raises(SourceUnavailable):
            source.accounts_for_bucket(BUCKET, NOW)
        with pytest.raises(SourceUnavailable):
            db.request_full_rebuild()
        with pytest.raises(SourceUnavailable):
            init_schema(source.engine)
    finally:
        source.close()

    message = str(caught.value)
    assert "app:***@127.0.0.1" in message and "s3cret" not in message
    assert caught.value.__cause__ is not None
    assert time.monotonic() - started < 60  # refused at once; bounded by the connect timeout


def test_unopenable_sqlite_file_is_source_unavailable(tmp_path: Path) -> None:
    source = SqlSource(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'db.sqlite3'}")
    try:
        with pytest.raises(SourceUnavailable, match=r"missing/dir/db\.sqlite3"):
            source.ping()
    finally:
        source.close()


def test_a_database_without_the_schema_says_how_to_create_it(db_url: str) -> None:
    source = SqlSource(db_url)
    try:
        with pytest.raises(SchemaMissing, match="sched db init"):
            source.ping()
        with pytest.raises(SchemaMissing):
            source.accounts_for_bucket(BUCKET, NOW)
        with pytest.raises(SchemaMissing):
            source.outbox_after(0, 10)
        with pytest.raises(SchemaMissing):
            source.update_last_used({1: NOW})
        init_schema(source.engine)
        source.ping()
    finally:
        source.close()


def test_dropped_postgres_connections_are_replaced_without_an_error(pg_url: str) -> None:
    source = SqlSource(init_schema(pg_url))
    admin = make_engine(pg_url)
    try:
        with source.engine.connect() as conn:  # the pooled connection the next call reuses
            pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        with admin.begin() as conn:  # what a server restart does to pooled connections
            assert conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()

        source.ping()
        assert source.max_outbox_id() == 0
    finally:
        admin.dispose()
        source.close()


def test_sqlite_engine_settings(tmp_path: Path) -> None:
    source = SqlSource(init_schema(f"sqlite:///{tmp_path / 's.sqlite3'}"))
    try:
        assert sql(source, "PRAGMA journal_mode") == [("wal",)]
        assert sql(source, "PRAGMA foreign_keys") == [(1,)]
        assert sql(source, "PRAGMA busy_timeout")[0][0] >= 5000
    finally:
        source.close()


@pytest.mark.parametrize(
    "url", ["not a url", "postgresql+nosuchdriver://app:s3cret@h/db", "mysql://app:s3cret@h/db"]
)
def test_a_bad_url_is_a_clear_error_without_the_password(url: str) -> None:
    with pytest.raises(InvalidDatabaseUrl, match="invalid database url") as caught:
        SqlSource(url)

    assert "s3cret" not in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_read_never_creates_the_sqlite_file_and_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "sched.sqlite3"
    source = SqlSource(f"sqlite:///{path}")
    try:
        with pytest.raises(SchemaMissing, match="SCHED_DATABASE_URL") as caught:
            source.accounts_for_bucket(BUCKET, NOW)
        assert str(path) in str(caught.value) and "sched db init" in str(caught.value)
        with pytest.raises(SchemaMissing):
            source.ping()
        assert not path.exists()
        init_schema(source.engine)  # creating the schema is what may create the file
        assert path.is_file()
        assert source.accounts_for_bucket(BUCKET, NOW) == []
    finally:
        source.close()


def test_list_schedulable_in_an_empty_directory_leaves_no_database_behind(
    tmp_path: Path,
) -> None:
    """No SCHED_DATABASE_URL (the relative default) and no Redis: the fallback read
    fails naming the URL it tried and the setting, and creates nothing."""
    script = (
        "from tasks import list_schedulable\n"
        "from tasks.source import SchemaMissing\n"
        "try:\n"
        "    list_schedulable(0, 'anthropic')\n"
        "except SchemaMissing as exc:\n"
        "    print('SchemaMissing:', exc)\n"
    )
    env = child_env(SCHED_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "SchemaMissing:" in done.stdout, done.stdout + done.stderr
    assert "sqlite:///sched.sqlite3" in done.stdout and "SCHED_DATABASE_URL" in done.stdout
    assert list(tmp_path.iterdir()) == []
