"""Clients for the three Redis topologies: one server, a Sentinel-managed master, a Cluster.

``redis://`` / ``rediss://`` / ``unix://`` name one server. A Sentinel deployment is named
the way Celery's broker names it, every sentinel a ``sentinel://`` URL joined by ``;``::

    sentinel://:secret@10.0.0.1:26379;sentinel://10.0.0.2:26379;sentinel://10.0.0.3:26379/0

with the master's name given apart (``sentinel_master``). The password and database of
the first URL are the master's; ``sentinel_password`` is the sentinels' own, if they ask
for one. A Cluster is named by any one of its nodes, with ``cluster=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379


def is_sentinel_url(url: str) -> bool:
    return url.split(";", 1)[0].strip().lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """The ``(host, port)`` of every sentinel in ``url``, and the master's connection
    options (``username``, ``password``, ``db``) from the first part that has them."""
    nodes: list[tuple[str, int]] = []
    options: dict[str, Any] = {}
    for part in filter(None, (piece.strip() for piece in url.split(";"))):
        parts = urlsplit(part)
        if parts.scheme.lower() != SENTINEL_SCHEME or not parts.hostname:
            raise ValueError(
                f"invalid sentinel URL part {_masked(part)!r}: expected sentinel://host:port"
            )
        nodes.append((parts.hostname, parts.port or DEFAULT_SENTINEL_PORT))
        if parts.username and "username" not in options:
            options["username"] = unquote(parts.username)
        if parts.password and "password" not in options:
            options["password"] = unquote(parts.password)
        db = parts.path.strip("/")
        if db and "db" not in options:
            if not db.isdigit():
                raise ValueError(f"invalid database {db!r} in sentinel URL: expected a number")
            options["db"] = int(db)
    if not nodes:
        raise ValueError("empty sentinel URL: expected sentinel://host:port[;sentinel://...]")
    return nodes, options


def _options(socket_timeout: float, client_options: Mapping[str, Any] | None) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": min(socket_timeout, 2.0),
    }
    options.update(client_options or {})
    return options


def _sentinels(
    url: str, sentinel_master: str | None, sentinel_password: str | None, options: dict[str, Any]
) -> tuple[list[tuple[str, int]], dict[str, Any], dict[str, Any], str]:
    """The sentinels' addresses, their own options, the master's, and its name."""
    if not sentinel_master:
        raise ValueError("a sentinel:// URL needs the master's name (SCHED_REDIS_SENTINEL_MASTER)")
    nodes, master_options = parse_sentinel_url(url)
    sentinel_options = dict(options)
    if sentinel_password:
        sentinel_options["password"] = sentinel_password
    return nodes, sentinel_options, master_options, sentinel_master


def connect(
    url: str,
    *,
    cluster: bool = False,
    sentinel_master: str | None = None,
    sentinel_password: str | None = None,
    socket_timeout: float = 5.0,
    client_options: Mapping[str, Any] | None = None,
) -> redis.Redis:
    """A client (bytes replies) for ``url`` in the topology it names.

    Timeouts are set so that a dead server gives an error quickly instead of a hang.
    ``client_options`` go to every connection (TLS files, say). A Sentinel client asks
    the sentinels for the master again after a connection error, so it follows a
    failover by itself; a Cluster client follows ``MOVED`` and slot changes.
    """
    options = _options(socket_timeout, client_options)
    if is_sentinel_url(url):
        nodes, sentinel_options, master_options, name = _sentinels(
            url, sentinel_master, sentinel_password, options
        )
        sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call, unused-ignore]
        master = sentinel.master_for(name, **master_options)  # type: ignore[no-untyped-call, unused-ignore]
        return cast(redis.Redis, master)
    if cluster:
        # RedisCluster speaks the same commands as one server (keys of a call must share
        # a slot, which the key layout guarantees); typed as one for the cache's sake.
        return cast(redis.Redis, RedisCluster.from_url(url, **options))
    return redis.Redis.from_url(url, health_check_interval=30, **options)


def connect_async(
    url: str,
    *,
    cluster: bool = False,
    sentinel_master: str | None = None,
    sentinel_password: str | None = None,
    socket_timeout: float = 5.0,
    client_options: Mapping[str, Any] | None = None,
) -> redis.asyncio.Redis:
    """As :func:`connect`, a ``redis.asyncio`` client, from the same arguments: the
    same topologies, timeouts and TLS options."""
    options = _options(socket_timeout, client_options)
    if is_sentinel_url(url):
        nodes, sentinel_options, master_options, name = _sentinels(
            url, sentinel_master, sentinel_password, options
        )
        sentinel = AsyncSentinel(nodes, sentinel_kwargs=sentinel_options, **options)  # type: ignore[no-untyped-call, unused-ignore]
        return cast(redis.asyncio.Redis, sentinel.master_for(name, **master_options))
    if cluster:
        return cast(redis.asyncio.Redis, AsyncRedisCluster.from_url(url, **options))
    return redis.asyncio.Redis.from_url(url, health_check_interval=30, **options)


def _masked(part: str) -> str:
    parts = urlsplit(part)
    if parts.password:
        return part.replace(f":{parts.password}@", ":***@", 1)
    return part
