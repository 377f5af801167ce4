"""Engines for the source database, tuned for several processes at once, and the driver
failures they raise turned into :mod:`tasks.source.errors`."""

from __future__ import annotations

import os
import sqlite3
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Connection, Engine

from tasks import connections
from tasks.source.errors import InvalidDatabaseUrl, SchemaMissing, SourceUnavailable

# Long enough to ride out another process's write transaction (they are short), short
# enough that a wedged database shows up as SourceUnavailable rather than a hung task.
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
# A PostgreSQL that does not answer fails the connect quickly so tasks can retry.
POSTGRES_CONNECT_TIMEOUT_SECONDS = 5


def mask_url(url: str | sa.URL) -> str:
    """``url`` with its password replaced by ``***``, fit to print or log."""
    if isinstance(url, sa.URL):
        return url.render_as_string(hide_password=True)
    return connections.mask_url(url)


@contextmanager
def db_errors(engine: Engine, action: str) -> Iterator[None]:
    """Re-raise driver failures as :class:`SourceUnavailable` or :class:`SchemaMissing`.

    Data errors (integrity, bad values) pass through unchanged: retrying cannot fix them.
    """
    where = mask_url(engine.url)
    try:
        yield
    except (exc.OperationalError, exc.ProgrammingError) as err:
        text = str(err.orig).lower()
        if "no such table" in text or ("relation" in text and "does not exist" in text):
            raise SchemaMissing(
                f"schema missing in {where} during {action}: run `sched db init` ({err.orig})"
            ) from err
        if isinstance(err, exc.ProgrammingError):
            raise
        raise SourceUnavailable(
            f"database {where} unavailable during {action}: {err.orig}"
        ) from err
    except (exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError) as err:
        raise SourceUnavailable(f"database {where} unavailable during {action}: {err}") from err


def make_engine(url: str | sa.URL, **kwargs: Any) -> Engine:
    """An engine for ``url`` set up for several processes at once.

    SQLite: WAL (readers never wait for the writer), a busy timeout, foreign keys on,
    and ``BEGIN IMMEDIATE`` for write transactions (see :func:`writing`) so two writers
    queue on the busy timeout instead of failing on a lock upgrade. PostgreSQL:
    connections are pinged before use, so a restarted server costs no failed task.
    """
    try:
        url = sa.make_url(url)
        if url.get_backend_name() == "sqlite":
            connect_args = {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
            engine = sa.create_engine(url, connect_args=connect_args, **kwargs)
            event.listen(engine, "connect", _sqlite_on_connect)
            event.listen(engine, "begin", _sqlite_on_begin)
        else:
            connect_args = {}
            if url.get_backend_name() == "postgresql":
                connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_SECONDS
            engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args, **kwargs)
    except ImportError as err:
        if isinstance(url, sa.URL) and url.get_backend_name() == "postgresql":
            # The URL is fine; its driver is an extra that was not installed.
            raise InvalidDatabaseUrl(
                f"database url {mask_url(url)} needs a driver that is not installed ({err}):"
                " pip install 'sched-cache[postgres]'"
            ) from None  # the message carries the cause; a chained one would hide the hint
        raise InvalidDatabaseUrl(
            f"invalid database url {mask_url(url)}: {err}"
            " (expected sqlite:///path or postgresql+psycopg://user:password@host/db)"
        ) from err
    except (exc.ArgumentError, exc.NoSuchModuleError) as err:
        raise InvalidDatabaseUrl(
            f"invalid database url {mask_url(url)}: {err}"
            " (expected sqlite:///path or postgresql+psycopg://user:password@host/db)"
        ) from err
    if url.get_backend_name() == "sqlite":
        _create_only_by_init(engine, url)
    _dispose_in_forked_children(engine)
    return engine


def allow_create(engine: Engine) -> None:
    """Let ``engine`` create its SQLite file: only the schema's creation may."""
    _CREATORS.add(engine)


# Engines that may create their SQLite file (init_schema's); any other connect to a file
# that does not exist fails instead of leaving an empty database behind.
_CREATORS: weakref.WeakSet[Engine] = weakref.WeakSet()


def _create_only_by_init(engine: Engine, url: sa.URL) -> None:
    # sqlite3.connect creates a missing file: a read in the wrong directory (the default
    # URL is relative) would leave an empty sched.sqlite3 there and then report a missing
    # schema, hiding that the setting was the mistake.
    path = sqlite_path(url)
    if path is None:
        return
    ref = weakref.ref(engine)

    def before_connect(dialect: Any, record: Any, cargs: Any, cparams: Any) -> None:
        alive = ref()
        if alive is None or alive in _CREATORS or os.path.exists(path):
            return
        if not os.path.isdir(os.path.dirname(path) or "."):
            return  # sqlite fails on its own, creating nothing: SourceUnavailable
        raise SchemaMissing(
            f"no database at {mask_url(url)} ({os.path.abspath(path)} does not exist): "
            "set SCHED_DATABASE_URL to the database to read, or create this one with "
            "`sched db init`"
        )

    event.listen(engine, "do_connect", before_connect)


def sqlite_path(url: sa.URL) -> str | None:
    """The file a SQLite URL names; None for an in-memory database."""
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        if "mode=memory" in database:
            return None
        database = database[len("file:") :].partition("?")[0]
    return database


def writing(engine: Engine) -> Engine:
    """``engine`` for write transactions (``BEGIN IMMEDIATE`` on SQLite)."""
    return engine.execution_options(sqlite_begin="IMMEDIATE")


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # Take transaction control from the sqlite3 module so _sqlite_on_begin decides.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_SECONDS * 1000)}")
        _sqlite_use_wal(cursor)
        cursor.execute("PRAGMA foreign_keys=ON")
        # Safe with WAL: a power loss may drop the last commits, never corrupt the file.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _sqlite_use_wal(cursor: Any) -> None:
    # WAL is a property of the file, set once. Switching needs the file to itself and
    # SQLite does not wait on its busy timeout for that: when several processes open a
    # new file at once the losers see "database is locked" and try again.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_SECONDS
    pause = 0.005
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() in ("wal", "memory"):
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


def _sqlite_on_begin(connection: Connection) -> None:
    mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


def _dispose_in_forked_children(engine: Engine) -> None:
    # A pooled connection must never be shared by two processes (Celery's prefork
    # workers fork after import): children start with an empty pool.
    ref = weakref.ref(engine)

    def after_fork() -> None:
        alive = ref()
        if alive is not None:
            alive.dispose(close=False)

    os.register_at_fork(after_in_child=after_fork)


def as_engine(url_or_engine: str | sa.URL | Engine) -> Engine:
    return url_or_engine if isinstance(url_or_engine, Engine) else make_engine(url_or_engine)
