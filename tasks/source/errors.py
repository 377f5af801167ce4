"""The errors a source's failures become.

A custom source (``SCHED_SOURCE_FACTORY``) raises these too, without importing any SQL
code: the tasks retry :class:`SourceUnavailable` and fail at once on the rest.
"""

from __future__ import annotations


class SourceError(Exception):
    """Base class of the source database's errors."""


class SourceUnavailable(SourceError):
    """The database could not be reached or did not answer; worth retrying."""


class SchemaMissing(SourceError):
    """The tables do not exist: the schema was never created (``sched db init``)."""


class InvalidDatabaseUrl(SourceError, ValueError):
    """A database URL that does not parse or names a driver that is not installed."""


class AccountNotFound(SourceError, LookupError):
    """No such account, or it is deleted."""


class GroupNotFound(SourceError, LookupError):
    """No such group."""
