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
    """A cached account payload could not be decoded.

    :attr:`account_id` and :attr:`payload` say which, when known, so the cache can make
    the next write of the account replace it.
    """

    def __init__(
        self, message: str, account_id: int | None = None, payload: bytes | None = None
    ) -> None:
        super().__init__(message)
        self.account_id = account_id
        self.payload = payload


class VersionNotReserved(CacheError, ValueError):
    """A snapshot was written under a version that was never reserved for its bucket."""


class CorruptKey(CacheError):
    """A key holds what this package never writes there: the wrong Redis type, or a
    value that does not parse. The message names the key; :attr:`key` holds it when known.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# Bad input ends up in exception messages and log lines; a few hundred characters say
# what it was, the rest would only flood the logs (a 2 MB argument, a 2 MB line).
BRIEF_CHARS = 200


def brief(value: object, limit: int = BRIEF_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with the size of what was cut away."""
    try:
        shown = repr(value)
    except Exception as exc:  # a broken __repr__ must not hide the error being reported
        return f"<{type(value).__name__} with a failing repr: {type(exc).__name__}>"
    if len(shown) <= limit:
        return shown
    size = f"{len(value):,} items" if isinstance(value, (list, tuple, dict, set)) else ""
    if isinstance(value, (str, bytes, bytearray)):
        size = f"{len(value):,} {'characters' if isinstance(value, str) else 'bytes'}"
    return f"{shown[:limit]}... ({size or type(value).__name__}, repr of {len(shown):,} characters)"


class InvalidAccountId(CacheError, ValueError):
    """An account id outside 1 .. 2**63-1 (what a BIGINT column holds), or not an integer."""


class ScriptError(CacheError):
    """Redis refused a command for a reason that retrying will not change: a Lua
    ``error()``, a script bug, an argument Redis rejects. The message names the script
    (or the action) and the key; :attr:`script` and :attr:`key` hold them when known.
    """

    def __init__(self, message: str, script: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.script = script
        self.key = key
