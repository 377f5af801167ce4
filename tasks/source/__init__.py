"""Everything behind the :class:`Source` protocol: the seam between the tasks and the
database of record.

``protocol`` (the seam and its data types) and ``errors`` import nothing of SQL, so a
custom source (``SCHED_SOURCE_FACTORY``) raises the errors the tasks retry on without
loading SQLAlchemy. The SQL implementation, loaded on first use: ``schema`` (tables,
triggers), ``engine`` (connections, driver failures as errors), ``store`` (shared
queries), ``reader`` (:class:`SqlSource`, what the tasks read) and ``writer``
(:class:`SqlWriter`, changes with their outbox events, built on a reader).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.source.errors import (
    AccountNotFound,
    GroupNotFound,
    InvalidDatabaseUrl,
    SchemaMissing,
    SourceError,
    SourceUnavailable,
)
from tasks.source.protocol import Group, OutboxEvent, OutboxEventType, OutboxStats, Source

if TYPE_CHECKING:
    from tasks.source.reader import SqlSource
    from tasks.source.writer import SqlWriter

__all__ = [
    "AccountNotFound",
    "Group",
    "GroupNotFound",
    "InvalidDatabaseUrl",
    "OutboxEvent",
    "OutboxEventType",
    "OutboxStats",
    "SchemaMissing",
    "Source",
    "SourceError",
    "SourceUnavailable",
    "SqlSource",
    "SqlWriter",
]

_LAZY = {"SqlSource": "tasks.source.reader", "SqlWriter": "tasks.source.writer"}


def __getattr__(name: str) -> Any:
    # The SQL classes load on first use: importing the protocol or the errors must not
    # import SQLAlchemy.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
