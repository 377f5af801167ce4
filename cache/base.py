"""What every store of the cache shares: the client, key space, scripts, clock, and the
one classification of Redis failures."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import (
    ClusterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.codec import DEFAULT_CACHED_CREDENTIALS, AccountCodec
from cache.connect import connect
from cache.errors import CacheError, CacheUnavailable, CorruptKey, ScriptError, brief
from cache.keys import SNAPSHOT_GRACE_SECONDS, KeySpace
from cache.scripts import ScriptName, Scripts, script_named_in

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


# Error codes of replies that say the server cannot serve now, not that the command was
# wrong: a replica promoted or demoted (READONLY, MASTERDOWN), a server still loading
# its data (LOADING), a script running too long (BUSY), a Cluster resharding or down
# (TRYAGAIN, CLUSTERDOWN), memory full (OOM). Retrying later is the cure for each.
OUTAGE_CODES = frozenset(
    {"READONLY", "LOADING", "BUSY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "OOM"}
)
# A pipeline's error names the failing command first: the reply's code follows this.
_PIPELINE_ERROR = re.compile(r"caused error: (\S+)")


def error_code(exc: ResponseError) -> str:
    """The reply's error code (``WRONGTYPE``, ``ERR``, ...), in a pipeline's error too."""
    message = str(exc)
    found = _PIPELINE_ERROR.search(message)
    return (found.group(1) if found else message).split(" ", 1)[0]


@contextmanager
def redis_errors(action: str, key: str | None = None) -> Iterator[None]:
    """Re-raise redis-py failures as this package's errors, naming the action.

    The one place that decides what a failure is: an outage (the network, a timeout, a
    server that cannot serve now: :data:`OUTAGE_CODES`) is :class:`CacheUnavailable`,
    which callers retry; a key of the wrong type is :class:`CorruptKey`; any other
    error reply (a Lua ``error()``, a script bug) is :class:`ScriptError`, naming the
    script and ``key``. Neither of the last two is retried: it would fail again.
    """
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError) as exc:
        raise CacheUnavailable(f"redis unavailable during {action}: {brief(str(exc))}") from exc
    except ResponseError as exc:
        code = error_code(exc)
        if code in OUTAGE_CODES or isinstance(exc, (ReadOnlyError, OutOfMemoryError)):
            raise CacheUnavailable(f"redis unavailable during {action}: {brief(str(exc))}") from exc
        where = f" (key {brief(key)})" if key else ""
        if code == "WRONGTYPE":
            raise CorruptKey(f"wrong key type during {action}{where}: {exc}", key) from exc
        script = script_named_in(str(exc))
        named = f"script {script}" if script else "redis"
        raise ScriptError(
            f"{named} failed during {action}{where}: {brief(str(exc))}", script, key
        ) from exc
    except (RedisError, RedisClusterException) as exc:
        # RedisClusterException is not a RedisError: a cross-slot call, a cluster that
        # cannot be mapped. Neither may escape as anything but this package's error; a
        # cluster none of whose nodes answers is unavailable, like a single server.
        if _caused_by_the_network(exc):
            raise CacheUnavailable(f"redis unavailable during {action}: {brief(str(exc))}") from exc
        raise CacheError(f"redis error during {action}: {brief(str(exc))}") from exc


def _caused_by_the_network(exc: BaseException) -> bool:
    seen: BaseException | None = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, (RedisConnectionError, RedisTimeoutError, OSError)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def raw(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


@dataclass(frozen=True, slots=True)
class Wiring:
    """What every store of the cache shares: the client and what derives from the
    configuration. The stores hold it; none of them owns it."""

    client: redis.Redis
    keys: KeySpace
    codec: AccountCodec
    scripts: Scripts[Script]
    clock: Clock
    grace_seconds: int

    @classmethod
    def build(
        cls,
        client: redis.Redis,
        *,
        prefix: str = "sched",
        snapshot_grace_seconds: int = SNAPSHOT_GRACE_SECONDS,
        cached_credentials: Iterable[str] = DEFAULT_CACHED_CREDENTIALS,
        clock: Clock = utc_now,
    ) -> Wiring:
        if snapshot_grace_seconds < 1:
            raise ValueError(f"snapshot_grace_seconds must be >= 1, got {snapshot_grace_seconds}")
        if client.get_encoder().decode_responses:
            raise ValueError("the cache needs a client with decode_responses=False (bytes)")
        return cls(
            client,
            KeySpace(prefix),
            AccountCodec(cached_credentials),
            Scripts(client),
            clock,
            snapshot_grace_seconds,
        )

    def run(self, name: ScriptName, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """Script ``name`` once per (keys, args): one call directly, more in a pipeline
        (which costs one extra round trip to check the script is loaded)."""
        script = self.scripts[name]
        if len(calls) == 1:
            keys, args = calls[0]
            return [script(keys=keys, args=args)]
        pipe = self.client.pipeline(transaction=False)
        for keys, args in calls:
            script(keys=keys, args=args, client=pipe)
        return pipe.execute()


def connect_url(
    url: str,
    *,
    socket_timeout: float = 5.0,
    client_options: Mapping[str, Any] | None = None,
    cluster: bool = False,
    sentinel_master: str | None = None,
    sentinel_password: str | None = None,
) -> redis.Redis:
    """A client for ``url``: one server (``redis://``, ``rediss://``, ``unix://``), a
    Cluster seed node (``cluster=True``) or Sentinels (``sentinel://h1:26379;sentinel://
    h2:26379`` with ``sentinel_master``); see :mod:`cache.connect`.

    Timeouts are set so that a dead server gives :class:`CacheUnavailable` quickly
    instead of a hang. ``client_options`` go to every connection (TLS files, say:
    ``{"ssl_ca_certs": "/etc/ssl/redis-ca.pem"}``).
    """
    with redis_errors(f"connecting to {url.split('@')[-1]}"):
        return connect(
            url,
            cluster=cluster,
            sentinel_master=sentinel_master,
            sentinel_password=sentinel_password,
            socket_timeout=socket_timeout,
            client_options=client_options,
        )
