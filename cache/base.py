"""What every part of the cache shares: the client, key space, scripts, clock, errors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Self

import redis
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from cache.codec import DEFAULT_CACHED_CREDENTIALS, AccountCodec
from cache.connect import connect
from cache.errors import CacheError, CacheUnavailable, CorruptKey
from cache.keys import SNAPSHOT_GRACE_SECONDS, KeySpace
from cache.scripts import Scripts

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def redis_errors(action: str, key: str | None = None) -> Iterator[None]:
    """Re-raise redis-py failures as this package's errors, naming the action.

    A key of the wrong type becomes :class:`CorruptKey`, naming ``key`` when the action
    touches only that one.
    """
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError) as exc:
        raise CacheUnavailable(f"redis unavailable during {action}: {exc}") from exc
    except ResponseError as exc:
        if "WRONGTYPE" not in str(exc):
            raise CacheError(f"redis error during {action}: {exc}") from exc
        where = f" (key {key})" if key else ""
        raise CorruptKey(f"wrong key type during {action}{where}: {exc}", key) from exc
    except (RedisError, RedisClusterException) as exc:
        # RedisClusterException is not a RedisError: a cross-slot call, a cluster that
        # cannot be mapped. Neither may escape as anything but this package's error; a
        # cluster none of whose nodes answers is unavailable, like a single server.
        if _caused_by_the_network(exc):
            raise CacheUnavailable(f"redis unavailable during {action}: {exc}") from exc
        raise CacheError(f"redis error during {action}: {exc}") from exc


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


class CacheBase:
    """Holds the client and everything derived from the configuration."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "sched",
        snapshot_grace_seconds: int = SNAPSHOT_GRACE_SECONDS,
        cached_credentials: Iterable[str] = DEFAULT_CACHED_CREDENTIALS,
        clock: Clock = utc_now,
    ) -> None:
        if snapshot_grace_seconds < 1:
            raise ValueError(f"snapshot_grace_seconds must be >= 1, got {snapshot_grace_seconds}")
        if client.get_encoder().decode_responses:
            raise ValueError("the cache needs a client with decode_responses=False (bytes)")
        self.client = client
        self.keys = KeySpace(prefix)
        self.grace_seconds = snapshot_grace_seconds
        self.codec = AccountCodec(cached_credentials)
        self.clock = clock
        self._scripts = Scripts(client)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        socket_timeout: float = 5.0,
        client_options: Mapping[str, Any] | None = None,
        cluster: bool = False,
        sentinel_master: str | None = None,
        sentinel_password: str | None = None,
        **kwargs: Any,
    ) -> Self:
        """A cache over a new client for ``url``: one server (``redis://``, ``rediss://``,
        ``unix://``), a Cluster seed node (``cluster=True``) or Sentinels
        (``sentinel://h1:26379;sentinel://h2:26379`` with ``sentinel_master``); see
        :mod:`cache.connect`.

        Timeouts are set so that a dead server gives :class:`CacheUnavailable` quickly
        instead of a hang. ``client_options`` go to every connection (TLS files, say:
        ``{"ssl_ca_certs": "/etc/ssl/redis-ca.pem"}``); ``kwargs`` to the cache.
        """
        with redis_errors(f"connecting to {url.split('@')[-1]}"):
            client = connect(
                url,
                cluster=cluster,
                sentinel_master=sentinel_master,
                sentinel_password=sentinel_password,
                socket_timeout=socket_timeout,
                client_options=client_options,
            )
        return cls(client, **kwargs)
