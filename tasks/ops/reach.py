"""How a ``sched`` command reaches the system: the running one or the configured one,
its Redis and its source database, and a clean stop on Ctrl-C."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from tasks import runtime
from tasks.connections import as_operator, mask_url
from tasks.ops.errors import NoDatabase, NoSystem


def use_running_system(*, required: bool) -> None:
    """Point this process at the system ``sched run`` runs, when no ``SCHED_*`` URL is
    set and one runs (see :mod:`tasks.ops.system`); say so on stderr.

    ``required``: with neither, fail with a line that says how to get a system, rather
    than read a default Redis that is someone else's or nobody's.
    """
    from tasks.ops import system

    settings = runtime.settings()
    if as_operator(settings) is not settings:
        settings = as_operator(settings)
        runtime.reset(settings)
    if system.urls_given(settings):
        return
    found = system.find(settings)
    if found is not None:
        runtime.reset(found.settings())
        click.echo(f"sched: reading {found.describe()}", err=True)
        return
    if required:
        start = (
            f"start one with `make run` in {system.CHECKOUT}"
            if (system.CHECKOUT / "Makefile").is_file()
            else "start one with `sched run`"
        )
        raise NoSystem(
            f"no SCHED_REDIS_URL set and no running system found "
            f"(no live system.json in {system.where_to_look(settings)}): {start}, "
            "or set SCHED_REDIS_URL and SCHED_DATABASE_URL to your servers"
        )


def use_cache() -> Any:
    from tasks.ops.commands import BadSetting
    from tasks.runtime import get_cache

    try:
        cache = get_cache()
    except ValueError as exc:  # redis-py's verdict on a malformed URL
        url = mask_url(runtime.settings().redis_url)
        raise BadSetting(f"invalid SCHED_REDIS_URL {url!r}: {exc}") from exc
    cache.ping()
    return cache


def use_source() -> Any:
    """The source database, which must exist: reading never creates a SQLite file."""
    from tasks.ops.system import sqlite_file
    from tasks.runtime import get_source

    settings = runtime.settings()
    path = None if settings.source_factory else sqlite_file(settings.database_url)
    if path is not None and not path.is_file():
        raise NoDatabase(
            f"no database at {path} (SCHED_DATABASE_URL {mask_url(settings.database_url)}): "
            "`make run` creates and fills one, `sched db init` creates an empty one"
        )
    source = get_source()
    ping = getattr(source, "ping", None)
    if callable(ping):
        ping()
    return source


@contextmanager
def stop_on_ctrl_c() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        click.echo("", err=True)
