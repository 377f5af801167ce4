"""Source database fixtures: every test runs on SQLite and, when configured, PostgreSQL.

- ``db_url``: an empty database of this test's own: a SQLite file in the test's tmp dir,
  or a fresh PostgreSQL schema (dropped afterwards) on ``SCHED_TEST_POSTGRES_URL``.
- ``source``: a :class:`SqlSource` on it, with the schema created.
- ``pg_url``: the PostgreSQL variant only, for tests of PostgreSQL behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tasks.source import SqlSource, SqlWriter
from tasks.source.schema import init_schema
from tests.support import TestServers, postgres_schema_or_skip, sqlite_url_in


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(
    request: pytest.FixtureRequest, tmp_path: Path, test_servers: TestServers
) -> Iterator[str]:
    if request.param == "sqlite":
        yield sqlite_url_in(tmp_path)
        return
    with postgres_schema_or_skip(test_servers) as url:
        yield url


@pytest.fixture
def pg_url(test_servers: TestServers) -> Iterator[str]:
    with postgres_schema_or_skip(test_servers) as url:
        yield url


@pytest.fixture
def source(db_url: str) -> Iterator[SqlSource]:
    source = SqlSource(init_schema(db_url))
    try:
        yield source
    finally:
        source.close()


@pytest.fixture
def db(source: SqlSource) -> SqlWriter:
    """Changes to the source database, each with its outbox event."""
    return SqlWriter(source)
