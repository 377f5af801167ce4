"""Errors raised by the cache. Everything derives from :class:`CacheError`."""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error this package raises."""


class CacheUnavailable(CacheError):
    """Redis could not be reached or did not answer in time.

    Raised ``from`` the redis-py exception, so the cause stays in the traceback.
    """


class InvalidBucket(CacheError, ValueError):
    """A bucket string or its parts cannot name a bucket."""


class CorruptPayload(CacheError):
    """A cached account payload could not be decoded."""


class VersionNotReserved(CacheError, ValueError):
    """A snapshot was written under a version that was never reserved for its bucket."""
