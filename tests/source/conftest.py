"""Source database fixtures: every test runs on SQLite and, when configured, PostgreSQL.

- ``db_url``: an empty database of this test's own: a SQLite file in the test's tmp dir,
  or a fresh PostgreSQL schema (dropped afterwards) on ``SCHED_TEST_POSTGRES_URL``.
- ``source``: a :class:`SqlSource` on it, with the schema created.
- ``pg_url``: the PostgreSQL variant only, for tests of PostgreSQL behaviour.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from tasks.db import init_schema, make_engine
from tasks.sqlsource import SqlSource
from tests.support import TestServers

NO_POSTGRES = (
    "PostgreSQL source tests need SCHED_TEST_POSTGRES_URL "
    "(e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)"
)


@contextmanager
def postgres_schema(base_url: str) -> Iterator[str]:
    """A URL whose connections use a new, empty schema; the schema is dropped after."""
    schema = f"sched_source_{uuid.uuid4().hex[:12]}"
    admin = make_engine(base_url)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


def sqlite_url(directory: Path) -> str:
    return f"sqlite:///{directory / 'source.sqlite3'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, test_servers: TestServers
) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url(tmp_path)
        return
    if not test_servers.postgres_url:
        pytest.skip(NO_POSTGRES)
    with postgres_schema(test_servers.postgres_url) as url:
        yield url


@pytest.fixture
def pg_url(test_servers: TestServers) -> Iterator[str]:
    if not test_servers.postgres_url:
        pytest.skip(NO_POSTGRES)
    with postgres_schema(test_servers.postgres_url) as url:
        yield url


@pytest.fixture
def source(db_url: str) -> Iterator[SqlSource]:
    source = SqlSource(init_schema(db_url))
    try:
        yield source
    finally:
        source.close()
